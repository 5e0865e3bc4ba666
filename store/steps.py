"""A run's step points (moe_core.records.StepPoint) in the step_metrics table and back:
the row is the point, column for key (store.leases.record_steps writes them, fenced on the
run's owner)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from moe_core import records
from store.models import Experiment, StepMetrics
from store.results import finite

COLUMNS = records.keys(records.StepPoint)


def step_rows(experiment_id: int, points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The step_metrics rows of `points` (records.StepPoint, read by its declared keys); a
    key a point lacks is a KeyError (nothing is written), a non-finite figure is null."""
    return [
        {"experiment_id": experiment_id,
         **{c: finite(p[c]) if isinstance(p[c], float) else p[c] for c in COLUMNS}}
        for p in points
    ]  # fmt: skip


def step_points(
    *, session: Session, experiment_id: int, after_step: int | None = None
) -> list[records.StepPoint]:
    """The run's points in step order (those after `after_step`), as plain rows: one query,
    no ORM objects (a page loads 2,000 of them)."""
    t = StepMetrics.__table__.c
    query = select(*(t[c] for c in COLUMNS)).where(t.experiment_id == experiment_id)
    if after_step is not None:
        query = query.where(t.step > after_step)
    rows = [dict(row._mapping) for row in session.execute(query.order_by(t.step))]
    return cast(list[records.StepPoint], rows)  # its columns are the record's keys (COLUMNS)


def last_step(*, session: Session, experiment_id: int) -> int:
    """The last step with a point (0: none); the primary key answers it."""
    t = StepMetrics.__table__.c
    return session.scalar(select(func.max(t.step)).where(t.experiment_id == experiment_id)) or 0


def every(*, session: Session, experiment_id: int) -> int | None:
    return session.scalar(
        select(Experiment.step_metrics_every).where(Experiment.id == experiment_id)
    )
