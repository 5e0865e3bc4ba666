"""The lease protocol, from claim to finish: a run belongs to one worker process at a
time, and every write of a worker is a single UPDATE fenced on its owner id, so a stale
worker's write changes nothing and says so (LostOwnership, or False). Also the sweeps'
side: re-queueing a dead owner's run, re-publishing a run whose message was lost, a run
handed back. worker/lease.py tells the story from the worker's side."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Update, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from moe_core import records
from store.db import rowcount
from store.models import (
    FINISHED,
    EpochMetrics,
    Experiment,
    ExpertStats,
    Status,
    StepMetrics,
    Study,
    Worker,
    utcnow,
)
from store.results import epoch_rows, finite, json_safe, result_columns
from store.steps import step_rows


class LostOwnership(Exception):
    """Another worker holds this run now (ours was taken for dead), or it was finished."""


class ClaimOutcome(enum.StrEnum):
    claimed = "claimed"  # a queued run is ours
    took_over = "took_over"  # a running run whose worker died is ours: a restart
    held = "held"  # a live worker runs it: nothing to do (a duplicate delivery)
    finished = "finished"  # finished or unknown: nothing to do
    gave_up = "gave_up"  # its workers died more than max_restarts times: marked failed


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    attempt: int = 0  # this attempt's number (1 for the first)


def claim_run(
    *,
    session: Session,
    experiment_id: int,
    owner: str,
    worker_name: str | None,
    device: str,
    stale_before: datetime,
    max_restarts: int,
    owner_is_dead: Callable[[str], bool] = lambda owner: False,
) -> Claim:
    """Take a queued run, or take over a running one whose owner is dead (committed).

    The owner is dead when its heartbeat is older than `stale_before`, or when
    `owner_is_dead(owner)` knows better (a process on this host that no longer exists).
    A takeover is a restart; one past `max_restarts` fails the run instead.
    """
    for _ in range(3):  # lost a race: read again
        row = session.execute(
            select(Experiment.status, Experiment.worker, Experiment.heartbeat_at,
                   Experiment.restarts, Experiment.attempts, Experiment.cancel_requested)
            .where(Experiment.id == experiment_id)
        ).one_or_none()  # fmt: skip
        if row is None or row.status in FINISHED:
            session.rollback()
            return Claim(ClaimOutcome.finished)
        restarts = row.restarts
        if row.status == Status.running:
            silent = row.heartbeat_at is None or row.heartbeat_at < stale_before
            if not silent and not (row.worker and owner_is_dead(row.worker)):
                session.rollback()
                return Claim(ClaimOutcome.held)
            restarts += 1
        fence = update(Experiment).where(
            Experiment.id == experiment_id,
            Experiment.status == row.status,
            Experiment.attempts == row.attempts,
        )
        now = utcnow()
        if row.cancel_requested:
            session.execute(fence.values(status=Status.cancelled, finished_at=now))
            session.commit()
            return Claim(ClaimOutcome.finished)
        if restarts > max_restarts:
            error = _gave_up(restarts - 1, max_restarts, row.worker, row.heartbeat_at, now)
            done = rowcount(session.execute(
                fence.values(status=Status.failed, finished_at=now, error=error,
                             restarts=restarts)
            ))  # fmt: skip
            session.commit()
            if done:
                return Claim(ClaimOutcome.gave_up)
            continue
        taken = rowcount(session.execute(
            fence.values(
                status=Status.running,
                worker=owner,
                worker_name=worker_name,
                device=device,
                heartbeat_at=now,
                started_at=func.coalesce(Experiment.started_at, now),
                progress=None,  # the new attempt reports its own
                attempts=Experiment.attempts + 1,
                restarts=restarts,
            )
        ))  # fmt: skip
        session.commit()
        if taken:
            outcome = (
                ClaimOutcome.took_over if row.status == Status.running else ClaimOutcome.claimed
            )
            return Claim(outcome, attempt=row.attempts + 1)
    return Claim(ClaimOutcome.held)


def requeue_abandoned(
    *,
    session: Session,
    stale_before: datetime,
    max_restarts: int,
    worker_name: str | None = None,
    owner_is_dead: Callable[[str], bool] | None = None,
) -> list[int]:
    """Put running runs whose owner is dead back in the queue (committed); returns their ids,
    which the caller publishes. Dead: silent since `stale_before`, or, for runs of the
    node `worker_name`, `owner_is_dead(owner)`. A run past `max_restarts` fails instead,
    and a run whose cancel was requested is cancelled."""
    query = select(Experiment.id, Experiment.worker, Experiment.heartbeat_at,
                   Experiment.restarts, Experiment.attempts, Experiment.cancel_requested)  # fmt: skip
    if worker_name is None:
        query = query.where(
            Experiment.status == Status.running,
            or_(Experiment.heartbeat_at.is_(None), Experiment.heartbeat_at < stale_before),
        )
    else:
        query = query.where(
            Experiment.status == Status.running, Experiment.worker_name == worker_name
        )
    requeued = []
    for row in session.execute(query).all():
        if worker_name is not None and not (owner_is_dead and owner_is_dead(row.worker or "")):
            continue
        now = utcnow()
        restarts = row.restarts + 1
        fence = update(Experiment).where(
            Experiment.id == row.id,
            Experiment.status == Status.running,
            Experiment.attempts == row.attempts,
        )
        if row.cancel_requested:
            session.execute(fence.values(status=Status.cancelled, finished_at=now))
        elif restarts > max_restarts:
            error = _gave_up(row.restarts, max_restarts, row.worker, row.heartbeat_at, now)
            session.execute(
                fence.values(status=Status.failed, finished_at=now, error=error,
                             restarts=restarts)
            )  # fmt: skip
        elif rowcount(session.execute(
            fence.values(status=Status.queued, worker=None, worker_name=None, heartbeat_at=None,
                         progress=None, restarts=restarts, queued_at=now)
        )):  # fmt: skip
            requeued.append(row.id)
    session.commit()
    return requeued


def republish_due(*, session: Session, now: datetime, grace: float) -> list[int]:
    """Queued runs whose task message is lost (committed; the caller publishes them again).

    A run is taken to have lost its message when a live worker has sat idle for `grace`
    seconds while the run was waiting since before that: had its message been in the
    queue, the idle worker would have taken it. Each run is marked re-published (its
    `queued_at` moves on) by exactly one caller; a duplicate message is harmless anyway,
    since a claim is fenced.
    """
    since = now - timedelta(seconds=grace)
    idle_worker = (
        select(Worker.name)
        .where(Worker.heartbeat_at >= since, Worker.idle_since <= since, ~Worker.stopping)
        .exists()
    )
    rows = session.execute(
        select(Experiment.id, Experiment.queued_at).where(
            Experiment.status == Status.queued,
            or_(Experiment.queued_at.is_(None), Experiment.queued_at < since),
            idle_worker,
        )
    ).all()
    due = []
    for experiment_id, queued_at in rows:
        moved = rowcount(session.execute(
            update(Experiment)
            .where(
                Experiment.id == experiment_id,
                Experiment.status == Status.queued,
                Experiment.queued_at.is_(None)
                if queued_at is None
                else Experiment.queued_at == queued_at,
            )
            .values(queued_at=now)
        ))  # fmt: skip
        if moved:
            due.append(experiment_id)
    session.commit()
    return due


def _gave_up(
    restarts: int, max_restarts: int, owner: str | None, heartbeat: datetime | None, now: datetime
) -> str:
    last = f"worker {owner}" if owner else "its worker"
    if heartbeat is not None:
        last += f" (last heartbeat {(now - heartbeat).total_seconds():.0f} s ago)"
    return (
        f"gave up: the run's worker died {restarts + 1} times and it was restarted "
        f"{restarts} times, the limit (MOE_MAX_RESTARTS={max_restarts}); the last was {last}. "
        "A run that kills its worker every time is often out of GPU or host memory."
    )


def heartbeat(
    *, session: Session, experiment_id: int, owner: str, progress: dict[str, Any] | None = None
) -> bool:
    """Record that `owner` is alive, and where the run is (committed); False when the run
    is no longer its own."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = json_safe(progress)
    alive = rowcount(session.execute(_update_owned(experiment_id, owner).values(**values)))
    session.commit()
    return alive == 1


class LeaseState(enum.StrEnum):
    held = "held"
    cancel_requested = "cancel_requested"
    lost = "lost"


def lease_state(*, session: Session, experiment_id: int, owner: str) -> LeaseState:
    """Whether `owner` still holds the run, and whether a cancel was requested."""
    row = session.execute(
        select(Experiment.cancel_requested, Experiment.status, Experiment.worker).where(
            Experiment.id == experiment_id
        )
    ).one_or_none()
    session.rollback()  # end the read transaction: the next poll must see new commits
    if row is None or row.status != Status.running or row.worker != owner:
        return LeaseState.lost
    return LeaseState.cancel_requested if row.cancel_requested else LeaseState.held


def hand_back(
    *,
    session: Session,
    experiment_id: int,
    owner: str,
    out_of_memory: bool = False,
    due_in: float = 0.0,
    restart: bool = False,
) -> bool:
    """Return a run that `owner` holds to the queue, not as a failure (committed); the
    caller publishes it, due in `due_in` seconds (its `queued_at` is then, so that no sweep
    takes the wait for a lost message). `out_of_memory`: because the GPU it shared ran out
    of memory (counted in oom_handbacks). `restart`: its processes died, as a takeover
    after a crash (counted in restarts, not handbacks). False when `owner` no longer
    holds it."""
    returned = rowcount(session.execute(
        _update_owned(experiment_id, owner).values(
            status=Status.queued,
            worker=None,
            worker_name=None,
            heartbeat_at=None,
            progress=None,
            handbacks=Experiment.handbacks + (0 if restart else 1),
            restarts=Experiment.restarts + (1 if restart else 0),
            oom_handbacks=Experiment.oom_handbacks + (1 if out_of_memory else 0),
            queued_at=utcnow() + timedelta(seconds=due_in),
        )
    ))  # fmt: skip
    session.commit()
    return returned == 1


def oom_handbacks(*, session: Session, experiment_id: int) -> int:
    return session.scalars(
        select(Experiment.oom_handbacks).where(Experiment.id == experiment_id)
    ).one()


def pin_precision(*, session: Session, experiment_id: int, owner: str, resolved: str) -> str | None:
    """The precision the run trains in (committed): its study's, when a member that started
    earlier fixed it, else `resolved` (what this worker made of the base's precision), which
    then fixes its study's. None when `owner` no longer holds the run."""
    study_id = session.scalar(select(Experiment.study_id).where(Experiment.id == experiment_id))
    precision = resolved
    if study_id is not None:
        # The first member to get here decides: a concurrent one's UPDATE finds it set.
        session.execute(
            update(Study)
            .where(Study.id == study_id, Study.precision.is_(None))
            .values(precision=resolved)
        )
        precision = session.scalar(select(Study.precision).where(Study.id == study_id))
    done = session.execute(_update_owned(experiment_id, owner).values(precision=precision))
    session.commit()
    return precision if rowcount(done) == 1 else None


def record_epoch(
    *, session: Session, experiment_id: int, owner: str, record: records.EpochRecord
) -> None:
    """Write one epoch's metrics and both kinds of expert stats in one transaction (committed).

    Upserts on (experiment, epoch) and (experiment, epoch, layer, kind): a run resumed from
    an older checkpoint replays epochs, and their rows are overwritten, never duplicated.
    Raises LostOwnership, writing nothing, when another worker owns the run now.
    """
    owned = rowcount(session.execute(
        _update_owned(experiment_id, owner).values(
            current_epoch=record["epoch"],
            best_val_loss=finite(record.get("best_val_loss")),
            best_val_ce_loss=finite(record.get("best_val_ce_loss")),
            stopped_early=bool(record.get("stopped_early", False)),
            heartbeat_at=utcnow(),
        )
    ))  # fmt: skip
    if owned != 1:
        session.rollback()
        raise LostOwnership(f"experiment {experiment_id} is no longer run by {owner}")
    metrics_row, stats_rows = epoch_rows(experiment_id, record)
    _upsert(session, EpochMetrics, [metrics_row], ["experiment_id", "epoch"])
    if stats_rows:
        _upsert(session, ExpertStats, stats_rows, ["experiment_id", "epoch", "layer", "kind"])
    session.commit()


def record_steps(
    *, session: Session, experiment_id: int, owner: str, every: int,
    points: list[records.StepPoint],
) -> None:  # fmt: skip
    """Write step points, and the K they are taken every, in one transaction (committed).

    Upserts on (experiment, step): a run resumed from an older checkpoint replays steps,
    and their points are overwritten, never duplicated. Raises LostOwnership, writing
    nothing, when another worker owns the run now."""
    owned = rowcount(session.execute(
        _update_owned(experiment_id, owner).values(step_metrics_every=every)
    ))  # fmt: skip
    if owned != 1:
        session.rollback()
        raise LostOwnership(f"experiment {experiment_id} is no longer run by {owner}")
    if points:
        _upsert(session, StepMetrics, step_rows(experiment_id, points), ["experiment_id", "step"])
    session.commit()


def finish_experiment(
    *,
    session: Session,
    experiment_id: int,
    owner: str,
    status: Status,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """End a run that `owner` holds (committed); False when it no longer holds it."""
    assert status in FINISHED
    values: dict[str, Any] = {
        "status": status,
        "finished_at": utcnow(),
        "error": error,
        "progress": None,
    }
    if result is not None:
        values.update(result_columns(result))
    done = rowcount(session.execute(_update_owned(experiment_id, owner).values(**values)))
    session.commit()
    return done == 1


def stale_cutoff(heartbeat_timeout: float) -> datetime:
    """Heartbeats older than this mean the worker is gone."""
    return utcnow() - timedelta(seconds=heartbeat_timeout)


def _update_owned(experiment_id: int, owner: str) -> Update:
    """An UPDATE of the run that changes nothing unless `owner` still runs it (fencing)."""
    return update(Experiment).where(
        Experiment.id == experiment_id,
        Experiment.worker == owner,
        Experiment.status == Status.running,
    )


def _upsert(session: Session, model: type, rows: list[dict[str, Any]], keys: list[str]) -> None:
    dialect = session.get_bind().dialect.name
    inserts: dict[str, Callable[[type], postgresql.Insert | sqlite.Insert]] = {
        "postgresql": postgresql.insert,
        "sqlite": sqlite.insert,
    }
    insert = inserts[dialect]
    statement = insert(model).values(rows)
    updates = {c: statement.excluded[c] for c in rows[0] if c not in keys}
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates))
