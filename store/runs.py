"""Data access for the API and the worker: keyword-only functions over a Session.

Functions that change a run's state are single conditional UPDATEs, so that the API
(cancel) and workers (claim, heartbeat, finish) never overwrite each other's decisions.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Update, delete, func, or_, select, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from moe_core.config import BaseConfig, ExperimentConfig
from store.models import (
    FINISHED,
    EpochMetrics,
    Experiment,
    ExpertStats,
    StatsKind,
    Status,
    Study,
    Worker,
    utcnow,
)

# ---------------------------------------------------------------------------- the API


def create_experiment(
    *,
    session: Session,
    name: str,
    config: ExperimentConfig,
    base: BaseConfig,
    preset: str | None = None,
    base_preset: str | None = None,
    dense: bool = False,
    baseline_id: int | None = None,
    study: Study | None = None,
    tags: Sequence[str] = (),
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> Experiment:
    """Add a queued experiment (flushed, not committed). With an `idempotency_key` taken
    already, the flush raises IntegrityError: see `find_submission`."""
    experiment = Experiment(
        name=name,
        tags=list(tags),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        preset=preset,
        base_preset=base_preset,
        dense=dense,
        baseline_id=baseline_id,
        study=study,
        config=config.model_dump(mode="json"),
        base=base.model_dump(mode="json"),
        status=Status.queued,
        num_epochs=base.num_epochs,
        queued_at=utcnow(),
    )
    session.add(experiment)
    session.flush()
    return experiment


def create_study(
    *,
    session: Session,
    name: str,
    base: BaseConfig,
    base_preset: str | None,
    presets: list[str],
    seeds: int = 1,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> Study:
    """Add a study row (flushed, not committed); its members are added by the caller."""
    study = Study(
        name=name,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        base_preset=base_preset,
        base=base.model_dump(mode="json"),
        experiment_presets=presets,
        seeds=seeds,
    )
    session.add(study)
    session.flush()
    return study


def get_experiment(*, session: Session, experiment_id: int) -> Experiment | None:
    return session.get(Experiment, experiment_id, populate_existing=True)


class Order(enum.StrEnum):
    newest = "newest"  # by id, newest first
    val_ce = "val_ce"  # by best validation CE, lowest first; runs without one last


@dataclass(frozen=True)
class ExperimentFilter:
    """What GET /experiments narrows the list to; None is "any"."""

    status: Status | None = None
    name: str | None = None  # a case-insensitive substring of the name
    tag: str | None = None
    study_id: int | None = None
    preset: str | None = None
    dense: bool | None = None


def list_experiments(
    *,
    session: Session,
    where: ExperimentFilter = ExperimentFilter(),
    order: Order = Order.newest,
    limit: int,
    offset: int,
) -> tuple[Sequence[Experiment], int]:
    query: Select[tuple[Experiment]] = select(Experiment)
    if where.status is not None:
        query = query.where(Experiment.status == where.status)
    if where.name is not None:
        pattern = where.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Experiment.name.ilike(f"%{pattern}%", escape="\\"))
    if where.tag is not None:
        query = query.where(_has_tag(session, where.tag))
    if where.study_id is not None:
        query = query.where(Experiment.study_id == where.study_id)
    if where.preset is not None:
        query = query.where(Experiment.preset == where.preset)
    if where.dense is not None:
        query = query.where(Experiment.dense.is_(where.dense))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if order is Order.val_ce:
        ordering = (Experiment.best_val_ce_loss.is_(None), Experiment.best_val_ce_loss,
                    Experiment.id.desc())  # fmt: skip
    else:
        ordering = (Experiment.id.desc(),)
    items = session.scalars(query.order_by(*ordering).limit(limit).offset(offset)).all()
    return items, total


def _has_tag(session: Session, tag: str):
    """`tag` is among the run's tags: JSONB containment on Postgres, the JSON1 table
    function on SQLite. (No index: a GIN index on tags would serve it once lists grow.)"""
    if session.get_bind().dialect.name == "postgresql":
        return type_coerce(Experiment.tags, postgresql.JSONB).contains([tag])
    each = func.json_each(Experiment.tags).table_valued("value")
    return select(each.c.value).where(each.c.value == tag).exists()


def find_submission(
    *, session: Session, model: type[Experiment] | type[Study], idempotency_key: str
) -> Experiment | Study | None:
    """The run or study an earlier POST with this Idempotency-Key stored."""
    session.rollback()  # after a failed insert, and to see the winner's commit
    return session.scalars(
        select(model).where(model.idempotency_key == idempotency_key)
    ).one_or_none()


def delete_experiment(*, session: Session, experiment_id: int) -> bool:
    """Delete a finished run with its epochs and statistics (committed; the caller removes
    its files). False when it is not finished: a worker might still be writing to it."""
    deleted = session.execute(
        delete(Experiment).where(Experiment.id == experiment_id, Experiment.status.in_(FINISHED))
    ).rowcount
    session.commit()
    return deleted == 1


def delete_study(*, session: Session, study_id: int) -> bool:
    """Delete a study whose members are all finished, with them (committed). False while a
    member is queued or running."""
    unfinished = (
        select(Experiment.id)
        .where(Experiment.study_id == study_id, Experiment.status.not_in(FINISHED))
        .exists()
    )
    deleted = session.execute(delete(Study).where(Study.id == study_id, ~unfinished)).rowcount
    session.commit()
    return deleted == 1


def experiment_status(*, session: Session, experiment_id: int) -> str | None:
    """The run's status alone (None for an unknown id): one column, no object loaded."""
    return session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))


def live_state(*, session: Session, experiment_id: int):
    """The run's status, error, current epoch and progress (None for an unknown id)."""
    return session.execute(
        select(Experiment.status, Experiment.error, Experiment.current_epoch,
               Experiment.progress).where(Experiment.id == experiment_id)
    ).one_or_none()  # fmt: skip


def epoch_records(*, session: Session, experiment_id: int) -> list[dict[str, Any]]:
    """Finished epochs in order, as the API shows them (the engine's epoch record shape).

    Read as plain rows in two queries, not ORM objects: dashboards poll this while runs
    go, and loading objects and validating them again cost ~8x the queries themselves.
    """
    m, s = EpochMetrics.__table__.c, ExpertStats.__table__.c
    stats: dict[tuple[int, str], list[dict[str, Any]]] = {}
    # One fetch, not a round of fetchone per row.
    stats_rows = session.execute(
        select(s.epoch, s.kind, s.layer, s.entropy, s.min_usage, s.max_usage, s.usage,
               s.dropped, s.max_step_load, s.imbalance, s.max_imbalance, s.pad_ratio, s.z_loss)
        .where(s.experiment_id == experiment_id)
        .order_by(s.epoch, s.kind, s.layer)
    ).all()  # fmt: skip
    for r in stats_rows:
        row = {"layer": r.layer, "entropy": _finite(r.entropy), "min_usage": r.min_usage,
               "max_usage": r.max_usage, "usage": r.usage, "dropped": _finite(r.dropped),
               "imbalance": _finite(r.imbalance)}  # fmt: skip
        if r.kind == StatsKind.train:
            row.update(max_step_load=_finite(r.max_step_load),
                       max_imbalance=_finite(r.max_imbalance), pad_ratio=_finite(r.pad_ratio),
                       z_loss=_finite(r.z_loss))  # fmt: skip
        stats.setdefault((r.epoch, r.kind), []).append(row)
    rows = session.execute(
        select(m.epoch, m.train_loss, m.train_ce_loss, m.train_aux_loss, m.train_eval_ce_loss,
               m.val_loss, m.val_ce_loss, m.val_aux_loss, m.tokens_per_sec, m.steps,
               m.forward_time, m.backward_time, m.optimizer_time, m.gating_temperature,
               m.duration)
        .where(m.experiment_id == experiment_id)
        .order_by(m.epoch)
    ).all()  # fmt: skip
    return [
        {
            "epoch": r.epoch,
            "train": {
                "loss": _finite(r.train_loss),
                "ce_loss": _finite(r.train_ce_loss),
                "aux_loss": _finite(r.train_aux_loss),
            },
            "train_eval": None
            if r.train_eval_ce_loss is None
            else {"ce_loss": _finite(r.train_eval_ce_loss)},
            "val": None
            if r.val_loss is None
            else {
                "loss": _finite(r.val_loss),
                "ce_loss": _finite(r.val_ce_loss),
                "aux_loss": _finite(r.val_aux_loss),
            },
            "tokens_per_sec": r.tokens_per_sec,
            "steps": r.steps,
            "forward_time": r.forward_time,
            "backward_time": r.backward_time,
            "optimizer_time": r.optimizer_time,
            "gating_temperature": r.gating_temperature,
            "duration": r.duration,
            "expert_stats": stats.get((r.epoch, StatsKind.train), []),
            "eval_expert_stats": stats.get((r.epoch, StatsKind.eval), []),
        }  # fmt: skip
        for r in rows
    ]


def get_study(*, session: Session, study_id: int) -> Study | None:
    return session.get(Study, study_id, populate_existing=True)


def list_studies(*, session: Session, limit: int, offset: int) -> tuple[Sequence[Study], int]:
    total = session.scalar(select(func.count()).select_from(Study)) or 0
    items = session.scalars(select(Study).order_by(Study.id.desc()).limit(limit).offset(offset))
    return items.all(), total


def request_cancel(*, session: Session, experiment_id: int, stale_before: datetime) -> None:
    """Cancel a run (committed).

    A queued run, or a running one whose worker stopped sending heartbeats before
    `stale_before`, is cancelled at once (its task then finds it finished and does
    nothing); a live running one is flagged, and its worker stops within a step or two.
    """
    now = utcnow()
    session.execute(
        update(Experiment)
        .where(
            Experiment.id == experiment_id,
            or_(
                Experiment.status == Status.queued,
                (Experiment.status == Status.running) & (Experiment.heartbeat_at < stale_before),
            ),
        )
        .values(status=Status.cancelled, cancel_requested=True, finished_at=now)
    )
    session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status == Status.running)
        .values(cancel_requested=True)
    )
    session.commit()


def mark_published(*, session: Session, experiment_ids: list[int]) -> None:
    """Record that these runs' tasks reached the broker (committed)."""
    session.execute(
        update(Experiment).where(Experiment.id.in_(experiment_ids)).values(published=True)
    )
    session.commit()


def withdraw(*, session: Session, experiment_ids: list[int], study_id: int | None) -> None:
    """Delete runs (and their study) whose tasks the broker refused (committed): the POST
    that stored them fails, so they must not exist. Runs already claimed stay: their
    message did get through."""
    session.execute(
        delete(Experiment).where(
            Experiment.id.in_(experiment_ids), Experiment.status == Status.queued
        )
    )
    if study_id is not None:
        members = select(Experiment.id).where(Experiment.study_id == study_id).exists()
        session.execute(delete(Study).where(Study.id == study_id, ~members))
    session.commit()


# ---------------------------------------------------------------------------- the worker
#
# A run's lease: `worker` is its owner's unique id, `heartbeat_at` its last sign of life,
# `attempts` a version that every claim bumps. Each change of hands is one conditional
# UPDATE fenced on what was read, so of two actors racing for a run exactly one wins, and a
# stale owner's writes (all conditional on `worker`) change nothing.


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
            done = session.execute(
                fence.values(status=Status.failed, finished_at=now, error=error,
                             restarts=restarts)
            ).rowcount  # fmt: skip
            session.commit()
            if done:
                return Claim(ClaimOutcome.gave_up)
            continue
        taken = session.execute(
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
        ).rowcount
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
        elif session.execute(
            fence.values(status=Status.queued, worker=None, worker_name=None, heartbeat_at=None,
                         progress=None, restarts=restarts, queued_at=now)
        ).rowcount:  # fmt: skip
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
        moved = session.execute(
            update(Experiment)
            .where(
                Experiment.id == experiment_id,
                Experiment.status == Status.queued,
                Experiment.queued_at.is_(None)
                if queued_at is None
                else Experiment.queued_at == queued_at,
            )
            .values(queued_at=now)
        ).rowcount
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
    alive = session.execute(_update_owned(experiment_id, owner).values(**values)).rowcount
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
) -> bool:
    """Return a run that `owner` holds to the queue, not as a failure (committed); the
    caller publishes it, due in `due_in` seconds (its `queued_at` is then, so that no sweep
    takes the wait for a lost message). `out_of_memory`: because the GPU it shared ran out
    of memory (counted in oom_handbacks). False when `owner` no longer holds it."""
    returned = session.execute(
        _update_owned(experiment_id, owner).values(
            status=Status.queued,
            worker=None,
            worker_name=None,
            heartbeat_at=None,
            progress=None,
            handbacks=Experiment.handbacks + 1,
            oom_handbacks=Experiment.oom_handbacks + (1 if out_of_memory else 0),
            queued_at=utcnow() + timedelta(seconds=due_in),
        )
    ).rowcount
    session.commit()
    return returned == 1


def oom_handbacks(*, session: Session, experiment_id: int) -> int:
    return session.scalar(select(Experiment.oom_handbacks).where(Experiment.id == experiment_id))


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
    return precision if done.rowcount == 1 else None


def record_epoch(
    *, session: Session, experiment_id: int, owner: str, record: dict[str, Any]
) -> None:
    """Write one epoch's metrics and both kinds of expert stats in one transaction (committed).

    Upserts on (experiment, epoch) and (experiment, epoch, layer, kind): a run resumed from
    an older checkpoint replays epochs, and their rows are overwritten, never duplicated.
    Raises LostOwnership, writing nothing, when another worker owns the run now.
    """
    epoch = record["epoch"]
    train, val = record["train"], record.get("val")
    train_eval = record.get("train_eval")
    owned = session.execute(
        _update_owned(experiment_id, owner).values(
            current_epoch=epoch,
            best_val_loss=_finite(record.get("best_val_loss")),
            best_val_ce_loss=_finite(record.get("best_val_ce_loss")),
            stopped_early=bool(record.get("stopped_early", False)),
            heartbeat_at=utcnow(),
        )
    ).rowcount
    if owned != 1:
        session.rollback()
        raise LostOwnership(f"experiment {experiment_id} is no longer run by {owner}")
    metrics_row = {
        "experiment_id": experiment_id,
        "epoch": epoch,
        "train_loss": train["loss"],
        "train_ce_loss": train["ce_loss"],
        "train_aux_loss": train["aux_loss"],
        "train_eval_ce_loss": train_eval["ce_loss"] if train_eval else None,
        "val_loss": val["loss"] if val else None,
        "val_ce_loss": val["ce_loss"] if val else None,
        "val_aux_loss": val["aux_loss"] if val else None,
        "tokens_per_sec": record["tokens_per_sec"],
        "steps": record["steps"],
        "forward_time": record["forward_time"],
        "backward_time": record["backward_time"],
        "optimizer_time": record["optimizer_time"],
        "gating_temperature": record.get("gating_temperature"),
        "duration": record.get("duration"),
        "recorded_at": utcnow(),
    }
    _upsert(session, EpochMetrics, [metrics_row], ["experiment_id", "epoch"])
    stats_rows = [
        {
            "experiment_id": experiment_id,
            "epoch": epoch,
            "layer": stats["layer"],
            "kind": kind,
            "entropy": stats["entropy"],
            "min_usage": stats["min_usage"],
            "max_usage": stats["max_usage"],
            "usage": list(stats["usage"]),
            "dropped": stats.get("dropped"),
            "max_step_load": stats.get("max_step_load") if kind == StatsKind.train else None,
            "imbalance": stats.get("imbalance"),
            **{
                key: stats.get(key) if kind == StatsKind.train else None
                for key in ("max_imbalance", "pad_ratio", "z_loss")
            },
        }
        for kind, key in ((StatsKind.train, "expert_stats"), (StatsKind.eval, "eval_expert_stats"))
        for stats in record.get(key) or []
    ]
    if stats_rows:
        _upsert(session, ExpertStats, stats_rows, ["experiment_id", "epoch", "layer", "kind"])
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
    done = session.execute(_update_owned(experiment_id, owner).values(**values)).rowcount
    session.commit()
    return done == 1


# A run's result (what moe_core's run_single_experiment returns) lives in columns of its
# row; these two functions are the only place that knows how, in both directions.


def result_columns(result: dict[str, Any]) -> dict[str, Any]:
    """The experiment columns that store `result` (docs/verdicts-contract.md)."""
    metrics = json_safe(result.get("metrics") or {})
    test = result.get("test")
    evaluation = result.get("evaluation")
    if test is not None:  # the columns hold its losses; the JSON the rest
        evaluation = {**(evaluation or {}), "test_epoch": test.get("epoch"),
                      "test_aux_loss": test.get("aux_loss")}  # fmt: skip
    values: dict[str, Any] = {
        "metrics": metrics,
        "params": result.get("params"),
        "active_params": result.get("active_params"),
        "test_loss": _finite(test.get("loss")) if test else None,
        "test_ce_loss": _finite(test.get("ce_loss")) if test else None,
        "evaluation": json_safe(evaluation),
    }
    if result.get("precision") is not None:  # fixed when it started; the run's own word
        values["precision"] = result["precision"]
    if isinstance(metrics, dict):
        # Prefer the engine's final word; the per-epoch values stand otherwise.
        for key in ("best_val_loss", "best_val_ce_loss"):
            if metrics.get(key) is not None:
                values[key] = metrics[key]
        if "stopped_early" in metrics:
            values["stopped_early"] = bool(metrics["stopped_early"])
    return values


def stored_result(run: Experiment) -> dict[str, Any]:
    """The result run_single_experiment returned for `run`, rebuilt from its row: what the
    API serves and what moe_core.criteria judges. Runs stored before a field existed have
    it as None."""
    evaluation = dict(run.evaluation) if run.evaluation is not None else None
    test = None
    if evaluation is not None and "test_epoch" in evaluation:
        test = {
            "loss": run.test_loss,
            "ce_loss": run.test_ce_loss,
            "aux_loss": evaluation.pop("test_aux_loss", None),
            "epoch": evaluation.pop("test_epoch"),
        }
    return {
        "config": run.config,
        "metrics": run.metrics or {},
        "params": run.params or 0,
        "active_params": run.active_params,
        "test": test,
        "evaluation": evaluation,
        "seed": run.base.get("seed"),
        "device": run.device,
        "precision": run.precision,
        "compile": run.base.get("compile", "off"),
    }


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
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    statement = insert(model).values(rows)
    updates = {c: statement.excluded[c] for c in rows[0] if c not in keys}
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """JSON as Postgres accepts it: NaN and infinities (e.g. an unset best loss) become null."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------- what to scale on

EPOCH_SECONDS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class ServiceStats:
    """The service's state as an operator or an autoscaler reads it (store.runs.service_stats)."""

    runs_by_status: dict[str, int]
    oldest_queued_seconds: float
    live_workers: int
    busy_workers: int
    stopping_workers: int
    epochs_finished: int
    # epoch durations: cumulative counts per upper bound of EPOCH_SECONDS_BUCKETS, sum, count
    epoch_seconds_buckets: list[int]
    epoch_seconds_sum: float
    epoch_seconds_count: int
    takeovers: int
    handbacks: int
    restarts: int


def service_stats(*, session: Session, heartbeat_timeout: float) -> ServiceStats:
    """A handful of aggregate queries; cheap enough for every scrape."""
    now = utcnow()
    by_status = dict(
        session.execute(select(Experiment.status, func.count()).group_by(Experiment.status)).all()
    )
    oldest = session.scalar(
        select(func.min(Experiment.queued_at)).where(Experiment.status == Status.queued)
    )
    if isinstance(oldest, datetime) and oldest.tzinfo is None:  # SQLite's aggregate is naive
        oldest = oldest.replace(tzinfo=now.tzinfo)
    elif isinstance(oldest, str):
        oldest = datetime.fromisoformat(oldest).replace(tzinfo=now.tzinfo)
    alive_after = now - timedelta(seconds=heartbeat_timeout)
    running = select(Experiment.worker_name).where(Experiment.status == Status.running)
    live, busy, stopping = session.execute(
        select(
            func.count(),
            func.count().filter(Worker.name.in_(running)),
            func.count().filter(Worker.stopping),
        ).where(Worker.heartbeat_at >= alive_after)
    ).one()
    m = EpochMetrics.__table__.c
    epochs = session.execute(
        select(
            func.count(),
            func.count(m.duration),
            func.coalesce(func.sum(m.duration), 0.0),
            *(func.count().filter(m.duration <= bound) for bound in EPOCH_SECONDS_BUCKETS),
        )
    ).one()
    takeovers, handbacks, restarts = session.execute(
        select(
            func.coalesce(func.sum(Experiment.restarts), 0),
            func.coalesce(func.sum(Experiment.handbacks), 0),
            func.coalesce(func.sum(Experiment.attempts - 1).filter(Experiment.attempts > 1), 0),
        )
    ).one()
    session.rollback()
    return ServiceStats(
        runs_by_status={status.value: int(by_status.get(status.value, 0)) for status in Status},
        oldest_queued_seconds=(now - oldest).total_seconds() if oldest else 0.0,
        live_workers=int(live),
        busy_workers=int(busy),
        stopping_workers=int(stopping),
        epochs_finished=int(epochs[0]),
        epoch_seconds_buckets=[int(count) for count in epochs[3:]],
        epoch_seconds_sum=float(epochs[2]),
        epoch_seconds_count=int(epochs[1]),
        takeovers=int(takeovers),
        handbacks=int(handbacks),
        restarts=int(restarts),
    )
