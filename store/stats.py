"""What the service's /metrics (Prometheus) reports of the store: runs by status, workers
live, busy and stopping, epochs recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.models import (
    EpochMetrics,
    Experiment,
    Status,
    Worker,
    utcnow,
)
from store.tracking import sink_failures

EPOCH_SECONDS_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class ServiceStats:
    """The service's state as an operator or an autoscaler reads it (service_stats)."""

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
    # live workers' latest GPU readings (Worker.gpu_reading), by name; CPU workers absent
    gpus: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the optional sinks' failures (worker.sinks), per sink
    sink_failures: dict[str, int] = field(default_factory=dict)


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
    gpus = {
        worker.name: reading
        for worker in session.scalars(
            select(Worker)
            .where(Worker.heartbeat_at >= alive_after, Worker.gpu_read_at.is_not(None))
            .order_by(Worker.name)
        )
        if (reading := worker.gpu_reading()) is not None
    }
    failures = sink_failures(session=session)
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
        gpus=gpus,
        sink_failures=failures,
    )
