"""One experiment's attempt on this worker: claim its lease, train it with the engine,
record every epoch, and finish it or hand it back (worker.lease tells the whole story)."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from moe_core.config import BaseConfig, ExperimentConfig
from moe_core.data import build_datasets
from moe_core.experiments import resolve_device, run_single_experiment
from moe_core.trainer import TrainingCancelled
from store import runs, workers
from store.db import session_scope
from store.models import Status
from store.queue import TrainingQueue
from store.runs import ClaimOutcome
from store.settings import Settings
from worker import shutdown
from worker.lease import RunLease

log = logging.getLogger(__name__)


def run_dir(settings: Settings, run_key: str) -> Path:
    """A run's artifacts (checkpoint, weights), keyed by its run key: unique to the run,
    unlike its id, which a reset database hands out again."""
    return settings.artifact_dir / "runs" / run_key


def run_experiment(
    experiment_id: int,
    *,
    settings: Settings,
    queue: TrainingQueue,
    worker_name: str | None = None,
) -> None:
    """Run (or resume) one experiment until it finishes or this worker stops; returns
    quietly when the run is not this worker's to run (finished, or held by a live worker)."""
    device = resolve_device(settings.device)
    lease = RunLease(
        experiment_id, settings=settings, queue=queue, worker_name=worker_name, device=str(device)
    )
    claim = lease.claim()
    if claim.outcome not in (ClaimOutcome.claimed, ClaimOutcome.took_over):
        log.info("experiment %s: nothing to do (%s)", experiment_id, claim.outcome)
        return
    with session_scope(settings.database_url) as session:
        experiment = runs.get_experiment(session=session, experiment_id=experiment_id)
        assert experiment is not None  # claimed just now; rows are never deleted under a run
        config = ExperimentConfig.model_validate(experiment.config)
        base = BaseConfig.model_validate(experiment.base)
        dense, run_key = experiment.dense, experiment.run_key
        if worker_name is not None:
            workers.set_device(session=session, name=worker_name, device=str(device))
    log.info("experiment %s: attempt %s (%s) on %s", experiment_id, claim.attempt,
             claim.outcome, lease)  # fmt: skip
    if shutdown.requested():  # told to stop before training began
        lease.hand_back()
        return

    directory = run_dir(settings, run_key)
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = directory / "checkpoint.pt"
    if claim.attempt == 1 and checkpoint.exists():
        # A first attempt has no past to resume; whatever lies there is not this run's.
        log.warning("experiment %s: removing a checkpoint its first attempt did not write",
                    experiment_id)  # fmt: skip
        checkpoint.unlink()
    with lease:
        try:
            data = _datasets(_with_data_settings(base, settings).model_dump_json())
            result = run_single_experiment(
                config,
                data.train,
                data.val,
                base,
                device,
                dense=dense,
                on_epoch_end=lease.record_epoch,
                should_stop=lease.should_stop,
                checkpoint_path=checkpoint,
                checkpoint_tag=run_key,
                # The dense baseline's weights are kept, as the spec's main() keeps
                # dense_model.pt.
                model_path=directory / "model.pt" if dense else None,
                # The kept weights on the test split: the result's `test`.
                test_dataset=data.test,
                verbose=False,
            )
        except TrainingCancelled as stop:
            lease.settle_stop(str(stop))  # cancelled, taken over, or this worker is stopping
        except runs.LostOwnership:
            log.info("experiment %s: taken over by another worker", experiment_id)
        except (OperationalError, InterfaceError):
            # The database stayed away past db_outage_seconds: not the run's fault. The
            # task's autoretry (worker.tasks) resumes it from its checkpoint once it is back.
            raise
        except Exception as exc:
            log.exception("experiment %s failed", experiment_id)
            lease.finish(Status.failed, error=f"{type(exc).__name__}: {exc}")
        else:
            lease.finish(Status.succeeded, result=result)


def _with_data_settings(base: BaseConfig, settings: Settings) -> BaseConfig:
    """Where this worker finds text and keeps its tokenizer cache, unless the run says."""
    return base.model_copy(
        update={
            "data_dir": base.data_dir or (str(settings.data_dir) if settings.data_dir else None),
            "cache_dir": base.cache_dir or str(settings.cache_dir),
        }
    )


@lru_cache(maxsize=1)
def _datasets(base_json: str) -> Any:
    # A study's members share one base: a pool process tokenises it once, not per member.
    return build_datasets(BaseConfig.model_validate(json.loads(base_json)))
