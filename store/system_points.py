"""A run's system points in the system_points table and back: its training process's CPU
and memory, and its GPU's utilisation, memory and power, every few seconds
(worker.system_metrics reads them; GET /experiments/{id}/system serves them).

A run keeps at most `max_points` of them (MOE_SYSTEM_POINTS_MAX): a write that passes it
deletes every other point of the run (its first and last kept), so the history stays whole
at half the density, and the writer doubles its interval (see record_system_points)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, cast

from pydantic import Field
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from typing_extensions import TypedDict  # pydantic reads it on Python < 3.12 too

from store.leases import LostOwnership, _upsert
from store.models import Experiment, Status, SystemPoint
from store.results import finite


class SystemReading(TypedDict):
    """One reading, as the worker takes it and the API serves it (null: not read there)."""

    t: Annotated[datetime, Field(description="when it was read (UTC)")]
    elapsed_s: Annotated[float, Field(description="seconds since the run first started")]
    step: Annotated[int | None, Field(description="optimizer steps done (null: not yet known)")]
    epoch: Annotated[
        float | None, Field(description="position in epochs: 2.5 is half-way through the third")
    ]
    cpu_percent: Annotated[
        float | None,
        Field(description="the training process's CPU, in percent of one core (250: two and "
              "a half cores); on several ranks, theirs summed"),
    ]  # fmt: skip
    rss_mb: Annotated[
        float | None, Field(description="its resident memory, MiB; on several ranks, summed")
    ]
    gpu_util: Annotated[
        float | None, Field(description="the GPU's utilisation, percent, of every process on it")
    ]
    gpu_mem_mb: Annotated[float | None, Field(description="GPU memory used, MiB, by every process")]
    gpu_power_w: Annotated[float | None, Field(description="the GPU's power draw, watts")]


COLUMNS = tuple(SystemReading.__annotations__)
FIGURES = COLUMNS[4:]  # what was measured; the rest says when


def record_system_points(
    *, session: Session, experiment_id: int, owner: str, points: Sequence[SystemReading],
    max_points: int,
) -> bool:  # fmt: skip
    """Write readings (committed) and return whether the run's points were thinned (past
    `max_points`: every other one deleted, the first and last kept).

    Upserts on (experiment, t): a write tried again after an outage overwrites its own rows,
    never duplicates them; a restarted run's new attempt reads later times and appends.
    Fenced like every worker write (store.leases): raises LostOwnership, writing nothing,
    when `owner` no longer runs it."""
    if points:
        # the rows first: on SQLite a transaction that writes first waits for the lock (a
        # read that turns into a write finds it taken and fails at once); the fence below
        # still rules, in the same transaction
        read: Sequence[Mapping[str, Any]] = points  # by the reading's declared keys
        rows = [
            {"experiment_id": experiment_id,
             **{c: finite(p[c]) if isinstance(p[c], float) else p[c] for c in COLUMNS}}
            for p in read
        ]  # fmt: skip
        _upsert(session, SystemPoint, rows, ["experiment_id", "t"])
    owned = session.scalar(
        select(Experiment.id)
        .where(Experiment.id == experiment_id, Experiment.worker == owner,
               Experiment.status == Status.running)
        .with_for_update()  # a takeover waits until these rows are in
    )  # fmt: skip
    if owned is None:
        session.rollback()
        raise LostOwnership(f"experiment {experiment_id} is no longer run by {owner}")
    thinned = _thin(session, experiment_id, max_points)
    session.commit()
    return thinned


def _thin(session: Session, experiment_id: int, max_points: int) -> bool:
    t = SystemPoint.__table__.c
    mine = t.experiment_id == experiment_id
    if (session.scalar(select(func.count()).where(mine)) or 0) <= max_points:
        return False
    ranked = select(t.t, func.row_number().over(order_by=t.t).label("n")).where(mine).subquery()
    last = select(func.max(t.t)).where(mine).scalar_subquery()
    every_other = select(ranked.c.t).where(ranked.c.n % 2 == 0, ranked.c.t != last)
    session.execute(delete(SystemPoint).where(mine, t.t.in_(every_other)))
    return True


def system_points(*, session: Session, experiment_id: int) -> list[SystemReading]:
    """The run's readings in time order, as plain rows (one query, no ORM objects)."""
    t = SystemPoint.__table__.c
    query = select(*(t[c] for c in COLUMNS)).where(t.experiment_id == experiment_id)
    rows = [dict(row._mapping) for row in session.execute(query.order_by(t.t))]
    return cast(list[SystemReading], rows)  # its columns are the reading's keys


def started_at(*, session: Session, experiment_id: int) -> datetime | None:
    """When the run first started (its elapsed time counts from there, over attempts)."""
    return session.scalar(select(Experiment.started_at).where(Experiment.id == experiment_id))
