"""The worker registry: every worker's main process registers at start and writes a
heartbeat whether or not it trains, so the service knows who is alive, who is idle (the
sweep and the autoscaler act on it) and what each one runs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, exists, func, literal, null, select, update
from sqlalchemy.orm import Session

from store.models import Experiment, Status, Worker, utcnow


def register(*, session: Session, name: str, host: str, pid: int, device: str | None) -> None:
    """Add this worker (or renew the row of an earlier process of the same name) (committed)."""
    now = utcnow()
    row = session.get(Worker, name)
    if row is None:
        session.add(Worker(name=name, host=host, pid=pid, device=device, started_at=now,
                           heartbeat_at=now, idle_since=now, stopping=False))  # fmt: skip
    else:
        row.host, row.pid, row.device, row.stopping = host, pid, device, False
        row.started_at = row.heartbeat_at = row.idle_since = now
    session.commit()


def beat(*, session: Session, name: str, stopping: bool = False) -> bool:
    """A heartbeat (committed); `idle_since` starts when the worker holds no run and clears
    while it holds one. False when the row is gone (pruned): register again."""
    now = utcnow()
    busy = exists().where(Experiment.worker_name == name, Experiment.status == Status.running)
    done = session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(
            heartbeat_at=now,
            stopping=stopping,
            idle_since=case(
                (busy, null()),
                else_=func.coalesce(Worker.idle_since, literal(now, Worker.idle_since.type)),
            ),
        )
    ).rowcount
    session.commit()
    return done == 1


def set_device(*, session: Session, name: str, device: str) -> None:
    """The device a worker's training process resolved (its main process never touches CUDA)."""
    session.execute(update(Worker).where(Worker.name == name).values(device=device))
    session.commit()


def deregister(*, session: Session, name: str) -> None:
    session.execute(delete(Worker).where(Worker.name == name))
    session.commit()


def prune(*, session: Session, silent_before: datetime) -> int:
    """Forget workers silent since `silent_before` (committed); returns how many."""
    gone = session.execute(delete(Worker).where(Worker.heartbeat_at < silent_before)).rowcount
    session.commit()
    return gone


def live_workers(*, session: Session, heartbeat_timeout: float) -> list[dict[str, Any]]:
    """Workers heard from within `heartbeat_timeout`, each with the run it holds (if any)."""
    alive_after = utcnow() - timedelta(seconds=heartbeat_timeout)
    rows = session.execute(
        select(Worker, Experiment.id)
        .outerjoin(
            Experiment,
            (Experiment.worker_name == Worker.name) & (Experiment.status == Status.running),
        )
        .where(Worker.heartbeat_at >= alive_after)
        .order_by(Worker.name)
    ).all()
    return [
        {
            "name": worker.name,
            "host": worker.host,
            "pid": worker.pid,
            "device": worker.device,
            "state": "stopping" if worker.stopping else ("busy" if run_id else "idle"),
            "experiment_id": run_id,
            "started_at": worker.started_at,
            "heartbeat_at": worker.heartbeat_at,
            "idle_since": worker.idle_since,
        }
        for worker, run_id in rows
    ]
