"""Seeds trained together on a worker (moe_core.together, issue 29). A pool process that
claims a run of a study, of a sweep's trial or of a sweep's dense baselines also claims the
queued runs that differ from it in their seed alone, when their base says `seeds_together`
(or leaves it to moe_core.together_policy: on a GPU where the stack fits this process's
share of its memory), and trains them as one stacked model on its one slot.

Each stays a run of its own: its lease (claim, heartbeat, fencing, cancel), epoch and step
rows, sinks, system metrics, log, checkpoint (an ordinary one-process checkpoint, so any
later attempt resumes it, stacked or alone), result, verdict and ending. A run cancelled,
pruned or failed leaves the stack and ends at once; the others go on. A worker that dies
leaves each run to be taken over as any run is (worker.lease). The stack holds one slot
and one GPU (store.workers.training_process).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from sqlalchemy.exc import InterfaceError, OperationalError

from moe_core.together import run_together
from moe_core.together_checkpoint import stack_resume_epoch
from moe_core.together_policy import resolve_together
from store import artifacts, queue_order
from store.db import session_scope
from store.leases import ClaimOutcome, oom_handbacks
from store.models import utcnow
from store.queue import TrainingQueue
from store.settings import Settings
from worker import gpu_memory
from worker.lease import RunLease
from worker.run_log import run_log
from worker.sinks import Sinks
from worker.training import (
    Prepared,
    checkpointing,
    describe,
    end_sinks,
    prepare,
    remove_foreign_checkpoints,
    reporting,
    run_sinks,
    settle,
    system_sampler,
    training_data,
)

log = logging.getLogger(__name__)

Member = tuple[RunLease, Prepared]


def claim_siblings(
    lease: RunLease, run: Prepared, *, settings: Settings, queue: TrainingQueue,
    worker_name: str | None, device: torch.device,
) -> list[Member]:  # fmt: skip
    """The claimed run's queued seed siblings that train with it, claimed and prepared (none
    when its seeds train apart)."""
    if run.base.gpus > 1 or run.base.seeds_together is False:
        return []
    resumes = stack_resume_epoch(checkpointing(run))
    if resumes is None:  # stopped within an epoch: it resumes alone
        return []
    with session_scope(settings.database_url) as session:
        found = queue_order.seed_siblings(session=session, experiment_id=lease.experiment_id,
                                          now=utcnow(), limit=settings.max_seeds_together - 1)  # fmt: skip
        # each time it ran out of GPU memory (in a stack, most likely), half as many seeds
        ooms = oom_handbacks(session=session, experiment_id=lease.experiment_id)
    wanted = _replicas(run, max(1, (1 + len(found)) >> ooms), settings, device) - 1
    group: list[Member] = []
    try:
        for sibling_id in found[:wanted]:
            member = _claim(sibling_id, run, resumes, settings=settings, queue=queue,
                            worker_name=worker_name, device=device)  # fmt: skip
            if member is not None:
                group.append(member)
    except BaseException:
        # (a database gone mid-claim) those claimed go back now, not after a heartbeat timeout
        _hand_back([lease for lease, _ in group], "its stack could not be formed")
        raise
    return group


def _claim(
    sibling_id: int, run: Prepared, resumes: int, *, settings: Settings, queue: TrainingQueue,
    worker_name: str | None, device: torch.device,
) -> Member | None:  # fmt: skip
    """One sibling claimed and prepared to join the stack, or None (taken, or not at the
    stack's epoch's end: handed back)."""
    sibling = RunLease(sibling_id, settings=settings, queue=queue, worker_name=worker_name,
                       device=str(device))  # fmt: skip
    claim = sibling.claim()  # fenced: a run another worker took meanwhile is skipped
    if claim.outcome is not ClaimOutcome.claimed:
        return None
    try:
        prepared = prepare(sibling, settings=settings, worker_name=worker_name, device=device)
        if prepared is None:
            return None
        if claim.attempt == 1:
            remove_foreign_checkpoints(prepared.directory, sibling_id)
    except BaseException:
        _hand_back([sibling], "its stack could not be formed")
        raise
    # its checkpoint too must be at the stack's epoch's end (it moved on between the read
    # and the claim, or a shutdown stopped it within an epoch when it trained alone)
    if (prepared.epochs_done == run.epochs_done
            and stack_resume_epoch(checkpointing(prepared)) == resumes):  # fmt: skip
        return sibling, prepared
    with run_log(prepared.directory / artifacts.LOG, sibling_id):  # its log says why
        sibling.hand_back("not at the epoch's end the runs it would train with resume from")
    return None


def _hand_back(leases: list[RunLease], why: str) -> None:
    """Best effort, for a stack that will not train: each back to the queue at once."""
    for lease in leases:
        try:
            lease.hand_back(why)
        except Exception:  # noqa: BLE001  # the agent's sweep puts it back after the timeout
            log.warning("experiment %s: not handed back", lease.experiment_id, exc_info=True)


def _replicas(run: Prepared, found: int, settings: Settings, device: torch.device) -> int:
    """How many seeds train as one stack: under the policy, as many as fit this process's
    share of the GPU; when asked, as many as fit the whole GPU (on a CPU: all found); 1:
    apart."""
    asked = run.base.seeds_together
    judged = None if asked and device.type == "cuda" else asked  # None: by the memory estimate
    share = 1.0 if asked else 1 / settings.runs_per_gpu
    for k in range(found, 1, -1):
        if resolve_together(judged, [(run.config, run.dense)], run.base, device, replicas=k,
                            share=share):  # fmt: skip
            return k
    return 1


def attempt_together(group: list[Member], *, settings: Settings, device: torch.device) -> None:
    """Train the claimed runs as one stack, each under its lease, with its sinks and its
    system metrics, and end each as its seed ends: one cancelled or failed at once, the
    others when the stack is done. The first's log is open already."""
    with contextlib.ExitStack() as stack:
        for lease, run in group[1:]:
            stack.enter_context(run_log(run.directory / artifacts.LOG, lease.experiment_id))
        log.info("experiments %s: seeds %s trained together as one stack",
                 [lease.experiment_id for lease, _ in group], [run.base.seed for _, run in group])  # fmt: skip
        # one per member, closed when its run ends: its sampler, its lease, then its sinks
        own = [stack.enter_context(contextlib.ExitStack()) for _ in group]
        sinks: list[Sinks] = []
        for (lease, run), its in zip(group, own, strict=True):
            sinks.append(run_sinks(lease, settings))
            its.callback(end_sinks, sinks[-1], lease, settings)
            lease.preparing_data(epoch=run.epochs_done + 1, num_epochs=run.base.num_epochs)
            its.enter_context(lease)  # every lease heartbeats before any sink is started
        for (lease, run), its, its_sinks in zip(group, own, sinks, strict=True):
            its_sinks.start(describe(lease, run))
            its.enter_context(system_sampler(lease, its_sinks, settings=settings, device=device))
        _train_together(group, sinks, own, settings=settings, device=device)


def _train_together(
    group: list[Member], sinks: list[Sinks], own: list[contextlib.ExitStack], *,
    settings: Settings, device: torch.device,
) -> None:  # fmt: skip
    leases = [lease for lease, _ in group]
    first = group[0][1]  # the runs differ in their seed alone: the first's data is theirs
    ended: set[int] = set()
    outages: list[BaseException] = []

    def end(i: int, outcome: dict[str, Any] | BaseException) -> None:
        """Member i's run ended as `outcome`: settled, its lease, sampler and sinks closed.
        Never raises (a database outage is kept, and raised once every run is settled)."""
        if i in ended:
            return
        ended.add(i)
        try:
            if isinstance(outcome, (OperationalError, InterfaceError)):
                outages.append(outcome)  # not the run's fault: the sweep puts it back, to resume
            else:
                settle(group[i][0], group[i][1], outcome, settings=settings)
        except (OperationalError, InterfaceError) as exc:
            outages.append(exc)
        except Exception:  # noqa: BLE001  # the others must still be settled
            log.exception("experiment %s: its ending not recorded", leases[i].experiment_id)
        try:
            own[i].close()
        except Exception:  # noqa: BLE001
            log.exception("experiment %s: its lease or sinks not closed", leases[i].experiment_id)

    try:
        if device.type == "cuda":
            gpu_memory.share_the_gpu(first.config, first.base, dense=first.dense, device=device,
                                     settings=settings, replicas=len(group))  # fmt: skip
        # the data is prepared while any of them still wants it
        data, every = training_data(first, settings, lambda: all(x.should_stop() for x in leases),
                                    None)  # fmt: skip
        saves = [checkpointing(run) for _, run in group]
        for lease, saved in zip(leases, saves, strict=True):
            lease.step_metrics_every = every
            if saved.source is not None and saved.source.exists():
                lease.log.info("resuming from %s", saved.source.name)
        outcomes = run_together(
            first.config, data.train, data.val, [run.base for _, run in group], device,
            dense=first.dense,
            hooks=[reporting(lease, s, every) for lease, s in zip(leases, sinks, strict=True)],
            model_paths=[run.directory / artifacts.MODEL for _, run in group],
            test_dataset=data.test, verbose=False,
            checkpointing=saves, on_left=end,
        )  # fmt: skip
    except Exception as exc:  # the stack's own, before any seed trained: every run's
        outcomes = [exc] * len(group)  # (a database outage: raised below, for the autoretry)
    for i, outcome in enumerate(outcomes):
        end(i, outcome)
    if outages:
        raise outages[0]
