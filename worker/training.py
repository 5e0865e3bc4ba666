"""One experiment's attempt on this worker: claim its lease, train it with the engine,
record every epoch, and finish it or hand it back (worker.lease tells the whole story)."""

from __future__ import annotations

import gc
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from datasets import disable_progress_bars
from sqlalchemy.exc import InterfaceError, OperationalError

from moe_core.atomic import write_json_atomic
from moe_core.checkpoint import Checkpointing, newest
from moe_core.config import BaseConfig, ExperimentConfig
from moe_core.data import build_datasets
from moe_core.errors import TrainingCancelled
from moe_core.hooks import TrainerHooks
from moe_core.records import EpochRecord, StepPoint, step_metrics_every
from moe_core.runner import (
    resolve_device,
    resolve_precision,
    run_single_experiment,
    steps_per_epoch,
)
from store import artifacts, catalogue, leases, queue_order, results, workers
from store.db import session_scope
from store.leases import ClaimOutcome
from store.models import FINISHED, Status, utcnow
from store.queue import TrainingQueue
from store.results import stored_result
from store.settings import Settings
from store.tracking import run_verdict, verdicts_left_waiting
from worker import gpu_memory, launch, shutdown, slots
from worker.lease import RunLease
from worker.run_log import run_log
from worker.sinks import RunInfo, Sinks, open_sinks
from worker.system_metrics import SystemSampler

if TYPE_CHECKING:  # torch.distributed only in a run's ranks
    from moe_core.parallel import Parallel

log = logging.getLogger(__name__)

# A worker has no terminal: `datasets`' progress bars would only fill each run's log (Celery
# logs a task's stderr) with hundreds of lines; the run's progress is reported on its row.
disable_progress_bars()


def run_experiment(
    experiment_id: int,
    *,
    settings: Settings,
    queue: TrainingQueue,
    worker_name: str | None = None,
) -> None:
    """Run (or resume) one experiment until it finishes or this worker stops; returns
    quietly when the run is not this worker's to run (finished, or held by a live worker).
    A run on several GPUs is trained by processes of its own (worker.launch), under the
    lease this process claims."""
    device = resolve_device(settings.device)
    chosen = _fairest(experiment_id, settings=settings, queue=queue)
    if chosen is None:
        return
    experiment_id = chosen
    lease = RunLease(
        experiment_id, settings=settings, queue=queue, worker_name=worker_name, device=str(device)
    )
    claim = lease.claim()
    if claim.outcome not in (ClaimOutcome.claimed, ClaimOutcome.took_over):
        log.info("experiment %s: nothing to do (%s)", experiment_id, claim.outcome)
        return
    run = prepare(lease, settings=settings, worker_name=worker_name, device=device)
    if run is None:
        log.info("experiment %s: taken over before it started", experiment_id)
        return
    with run_log(run.directory / artifacts.LOG, experiment_id):
        log.info("experiment %s: attempt %s (%s) on %s, %s", experiment_id, claim.attempt,
                 claim.outcome, worker_name or lease.owner, device)  # fmt: skip
        if shutdown.requested():  # told to stop before training began
            lease.hand_back()
            return
        if claim.attempt == 1:
            remove_foreign_checkpoints(run.directory, experiment_id)
        held = _take_slots(lease, run.base, settings=settings, worker_name=worker_name,
                           device=device)  # fmt: skip
        if held is None:
            return
        with slots.holding(held):
            if run.base.gpus > 1:
                launch.train_on_ranks(lease, run, gpus=held.indices, settings=settings,
                                      worker_name=worker_name)  # fmt: skip
            else:
                from worker import together  # it builds on this module's steps

                group = together.claim_siblings(lease, run, settings=settings, queue=queue,
                                                worker_name=worker_name, device=device)  # fmt: skip
                if group:
                    together.attempt_together([(lease, run), *group], settings=settings,
                                              device=device)  # fmt: skip
                else:
                    attempt(lease, run, settings=settings, device=device)


# A delivery that found no run allowed to start (their owners at their GPU limit) comes
# back after this long.
QUOTA_WAIT = 10.0


def _fairest(experiment_id: int, *, settings: Settings, queue: TrainingQueue) -> int | None:
    """The run this delivery takes (store.queue_order: fair across users), or None when none
    may start now. A delivered run left queued gets its wake-up again."""
    with session_scope(settings.database_url) as session:
        choice = queue_order.choose(session=session, hint=experiment_id, now=utcnow(),
                                    default_gpus=settings.max_gpus_per_user)  # fmt: skip
    again = choice.republish if choice.run is not None else experiment_id
    if again is not None:
        try:
            queue.enqueue([again], countdown=None if choice.run is not None else QUOTA_WAIT)
        except Exception:  # the broker is away: the agent publishes it again later
            log.warning("experiment %s: its wake-up not published again", again, exc_info=True)
    if choice.run is None:
        log.info("experiment %s: no queued run may start now (GPU quotas); again in %.0f s",
                 experiment_id, QUOTA_WAIT)  # fmt: skip
    elif choice.run != experiment_id:
        log.info("delivery of experiment %s takes experiment %s, the fairest", experiment_id,
                 choice.run)  # fmt: skip
    return choice.run


class Prepared(NamedTuple):
    """A claimed run, as its attempt trains it."""

    config: ExperimentConfig
    base: BaseConfig  # its precision pinned
    dense: bool
    run_key: str
    directory: Path
    epochs_done: int
    described: dict[str, Any]


def prepare(
    lease: RunLease, *, settings: Settings, worker_name: str | None, device: torch.device
) -> Prepared | None:
    """Read the claimed run and pin its precision; None when it was taken over meanwhile."""
    with session_scope(settings.database_url) as session:
        experiment = catalogue.get_experiment(session=session, experiment_id=lease.experiment_id)
        assert experiment is not None  # claimed just now; rows are never deleted under a run
        config = ExperimentConfig.model_validate(experiment.config)
        base = BaseConfig.model_validate(experiment.base)
        described = {"name": experiment.name, "preset": experiment.preset,
                     "tags": list(experiment.tags or []), "mlflow_run_id": experiment.mlflow_run_id,
                     "study": experiment.study.name if experiment.study else None}  # fmt: skip
        if worker_name is not None:
            workers.set_device(session=session, name=worker_name, device=str(device))
        # A study's members all train in the precision its first member resolved.
        precision = leases.pin_precision(session=session, experiment_id=lease.experiment_id,
                                       owner=lease.owner,
                                       resolved=resolve_precision(base.precision, device))  # fmt: skip
        if precision is None:
            return None
        run = Prepared(config, base.model_copy(update={"precision": precision}),
                       experiment.dense, experiment.run_key,
                       artifacts.run_dir(settings, experiment.run_key), experiment.current_epoch,
                       described)  # fmt: skip
    run.directory.mkdir(parents=True, exist_ok=True)
    return run


def remove_foreign_checkpoints(directory: Path, experiment_id: int) -> None:
    # A first attempt has no past to resume; whatever lies there is not this run's.
    for name in (artifacts.CHECKPOINT, artifacts.SHARDED_CHECKPOINT):
        path = directory / name
        if path.exists() or path.is_symlink():
            log.warning("experiment %s: removing a %s its first attempt did not write",
                        experiment_id, name)  # fmt: skip
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


# A run whose slots are busy (another run holds the worker's GPUs) is offered again after
# this long: to this worker once they free, or to another.
SLOTS_BUSY_DELAY = 5.0


def _take_slots(
    lease: RunLease, base: BaseConfig, *, settings: Settings, worker_name: str | None,
    device: torch.device,
) -> slots.Held | None:  # fmt: skip
    """The worker's slots the run needs (worker.slots), or None after handing it back (they
    are busy) or failing it (it asks more GPUs than this worker has)."""
    on_gpu = device.type == "cuda"
    count = slots.slot_count(settings, on_gpu=on_gpu)
    try:
        held = slots.take(slots.folder(settings, worker_name), count=count, gpus=base.gpus,
                          on_gpu=on_gpu, gpu_index=device.index or 0)  # fmt: skip
    except ValueError as exc:
        log.error("experiment %s: %s", lease.experiment_id, exc)
        lease.finish(Status.failed, error=str(exc))
        return None
    if held is None:
        lease.hand_back(f"{base.gpus} of this worker's {count} GPU slots are not free",
                        countdown=SLOTS_BUSY_DELAY)  # fmt: skip
    return held


def attempt(
    lease: RunLease, run: Prepared, *, settings: Settings, device: torch.device,
    parallel: Parallel | None = None,
) -> None:  # fmt: skip
    """Train the claimed run (on several ranks: rank 0's part, which reports) under its lease,
    with its sinks, and end it or hand it back."""
    sinks = run_sinks(lease, settings)
    run_info = describe(lease, run)
    lease.preparing_data(epoch=run.epochs_done + 1, num_epochs=run.base.num_epochs)
    try:
        sampler = system_sampler(lease, sinks, settings=settings, device=device)
        with lease:
            # under the lease's heartbeat: a tracking server slow to answer (or refuse)
            # must not make the run look dead
            sinks.start(run_info)
            with sampler:  # once the sinks have their run to write into
                _train(lease, run, device=device, settings=settings, sinks=sinks,
                       parallel=parallel)  # fmt: skip
    finally:
        end_sinks(sinks, lease, settings)


def run_sinks(lease: RunLease, settings: Settings) -> Sinks:
    """The run's sinks, as the settings ask (worker.sinks), remembering through its lease."""
    return open_sinks(tensorboard=settings.tensorboard,
                      mlflow_tracking_uri=settings.mlflow_tracking_uri,
                      remember_mlflow_run=lease.remember_mlflow_run,
                      on_failure=lease.record_sink_failure)  # fmt: skip


def system_sampler(
    lease: RunLease, sinks: Sinks, *, settings: Settings, device: torch.device
) -> SystemSampler:
    """Beside the training, its process's CPU, memory and GPU every few seconds."""
    return SystemSampler(lease.experiment_id, owner=lease.owner, settings=settings,
                         device=str(device), position=lease.position, on_points=sinks.system)  # fmt: skip


def describe(lease: RunLease, run: Prepared) -> RunInfo:
    """The run as its sinks name it."""
    return RunInfo(experiment_id=lease.experiment_id, run_key=run.run_key,
                   directory=run.directory, config=run.config.model_dump(mode="json"),
                   base=run.base.model_dump(mode="json"), dense=run.dense,
                   **run.described)  # fmt: skip


def end_sinks(sinks: Sinks, lease: RunLease, settings: Settings) -> None:
    """Tell the sinks how the attempt ended, as the store of record has it: the run finished
    by this attempt (its status, result and verdict), or left for another attempt."""
    if not sinks:
        return
    try:
        with session_scope(settings.database_url) as session:
            run = catalogue.get_experiment(session=session, experiment_id=lease.experiment_id)
            ended = run is not None and run.worker == lease.owner and run.status in FINISHED
            if ended and run is not None:
                status = str(run.status)
                result = stored_result(run) if run.status == Status.succeeded else None
                verdict = run_verdict(session=session, run=run) if result else None
                # runs judged against this dense one that ended first had no verdict then
                late = verdicts_left_waiting(session=session, dense=run) if result else []
    except Exception:  # the database is away: the sinks' ending is not worth waiting for
        log.warning("experiment %s: the run's ending not read for its sinks",
                    lease.experiment_id, exc_info=True)  # fmt: skip
        ended = False
    if ended:
        sinks.finish(status, result, verdict)
        sinks.late_verdicts(late)
    else:
        sinks.close()


def _train(
    lease: RunLease,
    run: Prepared,
    *,
    device: torch.device,
    settings: Settings,
    sinks: Sinks,
    parallel: Parallel | None,
) -> None:
    """The attempt under its lease, ending the run (or handing it back) however it goes."""
    experiment_id = lease.experiment_id
    config, base = run.config, run.base
    try:
        if device.type == "cuda" and parallel is None:  # ranks hold their GPUs alone
            gpu_memory.share_the_gpu(
                config, base, dense=run.dense, device=device, settings=settings
            )
        data, every = training_data(run, settings, lease.should_stop, parallel)
        log.info("data: %s training / %s validation blocks of %s tokens", len(data.train),
                 len(data.val), base.seq_len)  # fmt: skip
        lease.step_metrics_every = every
        saved = checkpointing(run)
        if saved.source is not None and saved.source.exists():
            log.info("resuming from %s (%s)", saved.source.name,
                     "several ranks'" if saved.source.is_dir() else "one process's")  # fmt: skip
        result = run_single_experiment(
            config,
            data.train,
            data.val,
            base,
            device,
            dense=run.dense,
            hooks=reporting(lease, sinks, every),
            checkpointing=saved,
            # Every run keeps its final weights (a study's dense run's are the spec's
            # dense_model.pt): the checkpoint alone would need the engine to read.
            model_path=run.directory / artifacts.MODEL,
            # The kept weights on the test split: the result's `test`.
            test_dataset=data.test,
            verbose=False,
            parallel=parallel,
        )
    except (OperationalError, InterfaceError):
        # The database stayed away past db_outage_seconds: not the run's fault. The
        # task's autoretry (worker.tasks) resumes it from its checkpoint once it is back.
        raise
    except Exception as exc:
        if parallel is not None and _peer_lost(exc):
            # Another rank died under a collective: not this run's failure. The ranks end,
            # and the pool process that launched them puts it back as a restart.
            log.warning("experiment %s: a rank was lost (%s)", experiment_id, exc)
            raise
        settle(lease, run, exc, settings=settings)
    else:
        settle(lease, run, result, settings=settings)


def reporting(lease: RunLease, sinks: Sinks, every: int) -> TrainerHooks:
    """The Trainer's hooks for the run: every epoch and step point to the store (its lease)
    and the sinks; its progress; its stop."""

    def epoch_end(record: EpochRecord) -> None:
        lease.record_epoch(record)  # the store first: it raises if the run is not ours
        sinks.epoch(record)

    def steps(points: list[StepPoint]) -> None:
        lease.record_steps(points)  # kept in memory; the lease's monitor writes them
        sinks.steps(points)

    return TrainerHooks(on_epoch_end=epoch_end, on_progress=lease.report_progress,
                        on_steps=steps, step_metrics_every=every,
                        should_stop=lease.should_stop)  # fmt: skip


def settle(
    lease: RunLease, run: Prepared, outcome: dict[str, Any] | BaseException, *,
    settings: Settings,
) -> None:  # fmt: skip
    """End the attempt as its training ended (`outcome`: the result, or what stopped it):
    succeeded, failed, cancelled, or handed back (a stop, the GPU's memory)."""
    experiment_id = lease.experiment_id
    if isinstance(outcome, TrainingCancelled):
        lease.settle_stop(str(outcome))  # cancelled, taken over, or this worker is stopping
    elif isinstance(outcome, gpu_memory.GPUTooSmall):
        log.error("experiment %s: %s", experiment_id, outcome)
        lease.finish(Status.failed, error=f"does not fit the GPU: {outcome}")
    elif isinstance(outcome, torch.cuda.OutOfMemoryError):
        _out_of_memory(lease, outcome, settings)
    elif isinstance(outcome, leases.LostOwnership):
        log.info("experiment %s: taken over by another worker", experiment_id)
    elif isinstance(outcome, BaseException):
        log.error("experiment %s failed", experiment_id, exc_info=outcome)
        lease.finish(Status.failed, error=f"{type(outcome).__name__}: {outcome}")
    else:
        try:  # a copy beside the weights; the store holds the result either way
            write_json_atomic(run.directory / artifacts.RESULT, results.json_safe(outcome))
        except OSError:
            log.warning("experiment %s: result.json not written", experiment_id, exc_info=True)
        lease.finish(Status.succeeded, result=outcome)
        log.info("experiment %s succeeded: best val CE %s", experiment_id,
                 outcome["metrics"].get("best_val_ce_loss"))  # fmt: skip


def follow(run: Prepared, *, settings: Settings, parallel: Parallel) -> None:
    """A rank other than 0 of a run on several GPUs (worker.ranks): its part of the training,
    reporting nothing (rank 0 does); it stops at the step every rank agrees on."""
    data, every = training_data(run, settings, shutdown.requested, parallel)
    try:
        run_single_experiment(
            run.config, data.train, data.val, run.base, parallel.device, dense=run.dense,
            hooks=TrainerHooks(should_stop=shutdown.requested, step_metrics_every=every),
            checkpointing=checkpointing(run), model_path=run.directory / artifacts.MODEL,
            test_dataset=data.test, verbose=False, parallel=parallel,
        )  # fmt: skip
    except TrainingCancelled:
        pass  # rank 0 settles the stop (cancel, handback or takeover)


def _peer_lost(exc: BaseException) -> bool:
    """Whether a collective failed because a peer rank went away (gloo and NCCL raise a
    RuntimeError naming their transport; torch's own DistError otherwise)."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and ("gloo" in text or "NCCL" in text)
    )


def training_data(
    run: Prepared, settings: Settings, should_stop: Callable[[], bool], parallel: Parallel | None
) -> tuple[Any, int]:
    """The run's data and how often it keeps a step point (every K steps, K such that the
    run keeps at most ~2,000): the same on every rank. On several ranks rank 0 prepares the
    data first (the tokenizer and dataset caches are written once, then read)."""

    def make() -> Any:
        return _datasets(_with_data_settings(run.base, settings), should_stop)

    data = parallel.main_first(make) if parallel is not None else make()
    every = step_metrics_every(
        run.base.num_epochs * steps_per_epoch(data.train, run.config.batch_size)
    )
    return data, every


def checkpointing(run: Prepared) -> Checkpointing:
    """One process writes checkpoint.pt, several ranks a DCP directory; an attempt resumes
    from the newer of the two, so a run resumes whatever its number of ranks was."""
    single, sharded = (run.directory / name
                       for name in (artifacts.CHECKPOINT, artifacts.SHARDED_CHECKPOINT))  # fmt: skip
    return Checkpointing(sharded if run.base.gpus > 1 else single, tag=run.run_key,
                         resume_from=newest(single, sharded))  # fmt: skip


def _out_of_memory(lease: RunLease, exc: BaseException, settings: Settings) -> None:
    """The GPU ran out of memory (beside the worker's other runs, most likely): not the
    run's fault. Free what this process holds and hand the run back, to be tried again
    after a pause; past `max_oom_handbacks` such handbacks the run fails, saying why."""
    gc.collect()
    torch.cuda.empty_cache()
    with session_scope(settings.database_url) as session:
        before = leases.oom_handbacks(session=session, experiment_id=lease.experiment_id)
    if before >= settings.max_oom_handbacks:
        log.error("experiment %s: out of GPU memory again (%s handbacks)", lease.experiment_id,
                  before)  # fmt: skip
        lease.finish(Status.failed, error=(
            f"out of GPU memory {before + 1} times ({exc}); it was handed back and tried "
            f"again {before} times (MOE_MAX_OOM_HANDBACKS). Run fewer runs per GPU "
            "(MOE_RUNS_PER_GPU), or shrink batch_size or the model"))  # fmt: skip
        return
    delay = gpu_memory.retry_delay(before)
    log.warning("experiment %s: out of GPU memory (%s); handing it back, offered again in "
                "%.0f s", lease.experiment_id, exc, delay)  # fmt: skip
    lease.hand_back("out of GPU memory", out_of_memory=True, countdown=delay)


def _with_data_settings(base: BaseConfig, settings: Settings) -> BaseConfig:
    """Where this worker finds text and keeps its tokenizer cache: its own settings, always.
    A stored run's paths are never a client's to choose (the API refuses them, and a row
    stored before it did is not trusted either). Without a data directory the text comes
    from the hub: only a dataset the operator offers (MOE_DATASETS) is fetched."""
    named = f"{base.dataset_name}/{base.dataset_config}"
    if settings.data_dir is None and named not in settings.datasets:
        raise ValueError(
            f"dataset {named!r} is not offered by this deployment (MOE_DATASETS: "
            f"{', '.join(settings.datasets)}); nothing was fetched"
        )
    return base.model_copy(
        update={
            "data_dir": str(settings.data_dir) if settings.data_dir else None,
            "cache_dir": str(settings.cache_dir),
        }
    )


_last_data: tuple[str, Any] | None = None


def _datasets(base: BaseConfig, should_stop: Callable[[], bool]) -> Any:
    """The run's data; a study's members share one base, so a pool process keeps the last
    one and tokenises it once, not per member. A cancel stops the preparation."""
    global _last_data
    key = base.model_dump_json(exclude={"seed"})
    if _last_data is None or _last_data[0] != key:
        _last_data = None
        _last_data = (key, build_datasets(base, should_stop=should_stop))
    return _last_data[1]
