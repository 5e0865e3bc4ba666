"""Data access for the API and the worker: keyword-only functions over a Session.

Functions that change a run's state are single conditional UPDATEs, so that the API
(cancel) and workers (claim, heartbeat, finish) never overwrite each other's decisions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, Update, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from api.models import FINISHED, EpochMetrics, Experiment, ExpertStats, Status, Study, utcnow
from moe_core.config import BaseConfig, ExperimentConfig

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
) -> Experiment:
    """Add a queued experiment (flushed, not committed)."""
    experiment = Experiment(
        name=name,
        preset=preset,
        base_preset=base_preset,
        dense=dense,
        baseline_id=baseline_id,
        study=study,
        config=config.model_dump(mode="json"),
        base=base.model_dump(mode="json"),
        status=Status.queued,
        num_epochs=base.num_epochs,
    )
    session.add(experiment)
    session.flush()
    return experiment


def create_study(
    *, session: Session, name: str, base: BaseConfig, base_preset: str | None, presets: list[str]
) -> Study:
    """Add a study row (flushed, not committed); its members are added by the caller."""
    study = Study(
        name=name,
        base_preset=base_preset,
        base=base.model_dump(mode="json"),
        experiment_presets=presets,
    )
    session.add(study)
    session.flush()
    return study


def get_experiment(*, session: Session, experiment_id: int) -> Experiment | None:
    return session.get(Experiment, experiment_id, populate_existing=True)


def list_experiments(
    *, session: Session, status: Status | None, limit: int, offset: int
) -> tuple[Sequence[Experiment], int]:
    query: Select[tuple[Experiment]] = select(Experiment)
    if status is not None:
        query = query.where(Experiment.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = session.scalars(query.order_by(Experiment.id.desc()).limit(limit).offset(offset)).all()
    return items, total


def experiment_status(*, session: Session, experiment_id: int) -> str | None:
    """The run's status alone (None for an unknown id): one column, no object loaded."""
    return session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))


def epoch_records(*, session: Session, experiment_id: int) -> list[dict[str, Any]]:
    """Finished epochs in order, as the API shows them (the engine's epoch record shape).

    Read as plain rows in two queries, not ORM objects: dashboards poll this while runs
    go, and loading objects and validating them again cost ~8x the queries themselves.
    """
    m, s = EpochMetrics.__table__.c, ExpertStats.__table__.c
    stats: dict[int, list[dict[str, Any]]] = {}
    stats_rows = session.execute(
        select(s.epoch, s.layer, s.entropy, s.min_usage, s.max_usage, s.usage, s.dropped)
        .where(s.experiment_id == experiment_id)
        .order_by(s.epoch, s.layer)
    ).all()  # one fetch, not a round of fetchone per row
    for epoch, layer, entropy, min_usage, max_usage, usage, dropped in stats_rows:
        stats.setdefault(epoch, []).append(
            {"layer": layer, "entropy": _finite(entropy), "min_usage": min_usage,
             "max_usage": max_usage, "usage": usage, "dropped": _finite(dropped)}
        )  # fmt: skip
    rows = session.execute(
        select(m.epoch, m.train_loss, m.train_ce_loss, m.train_aux_loss, m.val_loss,
               m.val_ce_loss, m.val_aux_loss, m.tokens_per_sec, m.steps, m.forward_time,
               m.backward_time, m.optimizer_time, m.gating_temperature)
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
            "expert_stats": stats.get(r.epoch, []),
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


def fail_unqueued(*, session: Session, experiment_ids: list[int], error: str) -> None:
    """Mark runs whose task could not be sent to the broker as failed (committed)."""
    session.execute(
        update(Experiment)
        .where(Experiment.id.in_(experiment_ids), Experiment.status == Status.queued)
        .values(status=Status.failed, error=error, finished_at=utcnow())
    )
    session.commit()


# ---------------------------------------------------------------------------- the worker


class LostOwnership(Exception):
    """Another worker took this run over (ours was taken for dead), or it was cancelled."""


def claim_experiment(
    *, session: Session, experiment_id: int, owner: str, device: str, stale_before: datetime
) -> bool:
    """Take a queued run, or resume an abandoned one; False when it is not ours to run.

    An abandoned run is `running` with no heartbeat since `stale_before`: its worker died
    and this is the redelivered task.
    """
    now = utcnow()
    claimed = session.execute(
        update(Experiment)
        .where(
            Experiment.id == experiment_id,
            or_(
                Experiment.status == Status.queued,
                (Experiment.status == Status.running)
                & or_(Experiment.heartbeat_at.is_(None), Experiment.heartbeat_at < stale_before),
            ),
        )
        .values(
            status=Status.running,
            worker=owner,
            device=device,
            heartbeat_at=now,
            started_at=func.coalesce(Experiment.started_at, now),
            attempts=Experiment.attempts + 1,
        )
    ).rowcount
    session.commit()
    return claimed == 1


def heartbeat(*, session: Session, experiment_id: int, owner: str) -> bool:
    """Record that `owner` is alive (committed); False when the run is no longer its own."""
    alive = session.execute(
        _update_owned(experiment_id, owner).values(heartbeat_at=utcnow())
    ).rowcount
    session.commit()
    return alive == 1


def should_stop(*, session: Session, experiment_id: int, owner: str) -> bool:
    """True when the run was cancelled or is no longer `owner`'s."""
    row = session.execute(
        select(Experiment.cancel_requested, Experiment.status, Experiment.worker).where(
            Experiment.id == experiment_id
        )
    ).one_or_none()
    session.rollback()  # end the read transaction: the next poll must see new commits
    if row is None:
        return True
    cancel_requested, status, worker = row
    return cancel_requested or status != Status.running or worker != owner


def record_epoch(
    *, session: Session, experiment_id: int, owner: str, record: dict[str, Any]
) -> None:
    """Write one epoch's metrics and expert stats in one transaction (committed).

    Upserts on (experiment, epoch) and (experiment, epoch, layer): a run resumed from an
    older checkpoint replays epochs, and their rows are overwritten, never duplicated.
    Raises LostOwnership, writing nothing, when another worker owns the run now.
    """
    epoch = record["epoch"]
    train, val = record["train"], record.get("val")
    owned = session.execute(
        _update_owned(experiment_id, owner).values(
            current_epoch=epoch,
            best_val_loss=_finite(record.get("best_val_loss")),
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
        "val_loss": val["loss"] if val else None,
        "val_ce_loss": val["ce_loss"] if val else None,
        "val_aux_loss": val["aux_loss"] if val else None,
        "tokens_per_sec": record["tokens_per_sec"],
        "steps": record["steps"],
        "forward_time": record["forward_time"],
        "backward_time": record["backward_time"],
        "optimizer_time": record["optimizer_time"],
        "gating_temperature": record.get("gating_temperature"),
        "recorded_at": utcnow(),
    }
    _upsert(session, EpochMetrics, [metrics_row], ["experiment_id", "epoch"])
    stats_rows = [
        {
            "experiment_id": experiment_id,
            "epoch": epoch,
            "layer": stats["layer"],
            "entropy": stats["entropy"],
            "min_usage": stats["min_usage"],
            "max_usage": stats["max_usage"],
            "usage": list(stats["usage"]),
            "dropped": stats.get("dropped"),
        }
        for stats in record.get("expert_stats") or []
    ]
    if stats_rows:
        _upsert(session, ExpertStats, stats_rows, ["experiment_id", "epoch", "layer"])
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
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if result is not None:
        metrics = _json_safe(result.get("metrics") or {})
        values["metrics"] = metrics
        values["params"] = result.get("params")
        if isinstance(metrics, dict):
            # Prefer the engine's final word; the per-epoch values stand otherwise.
            if metrics.get("best_val_loss") is not None:
                values["best_val_loss"] = metrics["best_val_loss"]
            if "stopped_early" in metrics:
                values["stopped_early"] = bool(metrics["stopped_early"])
    done = session.execute(_update_owned(experiment_id, owner).values(**values)).rowcount
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
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[dialect]
    statement = insert(model).values(rows)
    updates = {c: statement.excluded[c] for c in rows[0] if c not in keys}
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    """JSON as Postgres accepts it: NaN and infinities (e.g. an unset best loss) become null."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
