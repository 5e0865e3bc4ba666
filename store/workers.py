"""The worker registry: every worker's main process registers at start and writes a
heartbeat whether or not it trains, so the service knows who is alive, who is idle (the
sweep and the autoscaler act on it) and what each one runs."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, literal, null, select, update
from sqlalchemy.orm import Session

from store.db import rowcount
from store.models import Experiment, Status, Worker, utcnow


def register(
    *,
    session: Session,
    name: str,
    host: str,
    pid: int,
    device: str | None,
    slots: int = 1,
    gpus: int = 1,
) -> None:
    """Add this worker (or renew the row of an earlier process of the same name) (committed);
    `slots`: the runs it trains at once; `gpus`: its GPUs (a CPU worker's process slots),
    which a run on several holds several of (worker.slots)."""
    now = utcnow()
    row = session.get(Worker, name)
    if row is None:
        session.add(Worker(name=name, host=host, pid=pid, device=device, started_at=now,
                           heartbeat_at=now, idle_since=now, stopping=False, slots=slots,
                           gpus=gpus))  # fmt: skip
    else:
        row.host, row.pid, row.device, row.stopping, row.slots = host, pid, device, False, slots
        row.gpus = gpus
        row.started_at = row.heartbeat_at = row.idle_since = now
    session.commit()


# The columns of a GPU reading (worker.gpu_telemetry): all null when there is none.
GPU_COLUMNS = ("gpu_name", "gpu_utilization", "gpu_memory_used", "gpu_memory_total",
               "gpu_power_watts", "gpu_read_at")  # fmt: skip


def run_gpus() -> Any:
    """A run's GPUs as SQL: its base's `gpus` (a run stored before it existed: 1)."""
    return func.coalesce(Experiment.base["gpus"].as_integer(), 1)


def training_process() -> Any:
    """The process a running run trains in, as SQL: its lease owner's `host:pid` (an owner
    is `host:pid:` and 8 hex digits: worker.lease.new_owner_id). Seeds trained together
    (worker.together) share one process, one slot and one GPU."""
    length = func.length(Experiment.worker)
    return case((length > 9, func.substr(Experiment.worker, 1, length - 9)),
                else_=Experiment.worker)  # fmt: skip


def beat(
    *, session: Session, name: str, stopping: bool = False, gpu: Mapping[str, Any] | None = None
) -> bool:
    """A heartbeat (committed); `idle_since` starts when the worker has a free slot (with one
    slot: holds no run) and clears while every slot trains. `gpu`: the worker's GPU reading,
    written whole, so that a worker whose reading failed shows none rather than an old one.
    False when the row is gone (pruned): register again."""
    now = utcnow()
    running = (  # its slots in use: a stack of seeds trains in one
        select(func.count(func.distinct(training_process())))
        .where(Experiment.worker_name == name, Experiment.status == Status.running)
        .scalar_subquery()
    )
    # GPUs held alone by runs on several (one-GPU runs share theirs: MOE_RUNS_PER_GPU)
    held = (
        select(func.coalesce(func.sum(case((run_gpus() > 1, run_gpus()), else_=0)), 0))
        .where(Experiment.worker_name == name, Experiment.status == Status.running)
        .scalar_subquery()
    )
    # every pool process trains, or runs on several GPUs hold them all
    busy = (running >= Worker.slots) | (held >= Worker.gpus)
    done = rowcount(session.execute(
        update(Worker)
        .where(Worker.name == name)
        .values(
            heartbeat_at=now,
            stopping=stopping,
            **{column: (gpu or {}).get(column) for column in GPU_COLUMNS},
            idle_since=case(
                (busy, null()),
                else_=func.coalesce(Worker.idle_since, literal(now, Worker.idle_since.type)),
            ),
        )
    ))  # fmt: skip
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
    gone = rowcount(session.execute(delete(Worker).where(Worker.heartbeat_at < silent_before)))
    session.commit()
    return gone


def live_workers(*, session: Session, heartbeat_timeout: float) -> list[dict[str, Any]]:
    """Workers heard from within `heartbeat_timeout`, each with the runs it holds (`busy`
    while it trains any, `slots_in_use` of its `slots`)."""
    alive_after = utcnow() - timedelta(seconds=heartbeat_timeout)
    rows = session.execute(
        select(Worker, Experiment.id, run_gpus(), training_process())
        .outerjoin(
            Experiment,
            (Experiment.worker_name == Worker.name) & (Experiment.status == Status.running),
        )
        .where(Worker.heartbeat_at >= alive_after)
        .order_by(Worker.name, Experiment.id)
    ).all()
    held: dict[str, tuple[Worker, list[int], list[int], set[str]]] = {}
    for worker, run_id, gpus, process in rows:
        _, runs, run_gpus_held, processes = held.setdefault(worker.name, (worker, [], [], set()))
        if run_id is not None:
            runs.append(run_id)
            run_gpus_held.append(gpus)
            processes.add(process)
    return [
        {
            "name": worker.name,
            "host": worker.host,
            "pid": worker.pid,
            "device": worker.device,
            "state": "stopping" if worker.stopping else ("busy" if run_ids else "idle"),
            "slots": worker.slots,
            "slots_in_use": len(processes),  # a stack of seeds holds one
            "experiment_ids": run_ids,
            # the run it holds, for a worker of one slot (the first, for several)
            "experiment_id": run_ids[0] if run_ids else None,
            "gpus": worker.gpus,
            "gpus_in_use": min(worker.gpus, sum(gpus)),  # one-GPU runs may share one
            "gpu_holders": [
                {"experiment_id": i, "gpus": g} for i, g in zip(run_ids, gpus, strict=True)
            ],
            "started_at": worker.started_at,
            "heartbeat_at": worker.heartbeat_at,
            "idle_since": worker.idle_since,
            "gpu": worker.gpu_reading(),
        }
        for worker, run_ids, gpus, processes in held.values()
    ]
