"""The worker registry: a row per live worker process, with its latest GPU reading."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from store.models.base import Base, UTCDateTime, utcnow


class Worker(Base):
    """A worker process (one per GPU), registered while it lives: its main process writes a
    heartbeat whether or not it trains. Which run it trains is the run's `worker_name`."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # the Celery node name
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(50))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Since when it has had a slot free (with one slot: held no run); null while every slot
    # trains. A run left queued that long beside it lost its message (store.leases.republish_due).
    idle_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Told to stop (SIGTERM): it hands its run back and takes no other.
    stopping: Mapped[bool] = mapped_column(Boolean, default=False)
    # Runs it trains at once on its one device (MOE_RUNS_PER_GPU: its Celery pool's size).
    slots: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # Its GPUs (MOE_GPUS_PER_WORKER, or those it sees; a CPU worker: its process slots): a
    # run on k GPUs holds k of them while its ranks train (worker.slots).
    gpus: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # The latest NVML reading of its GPU, taken with the heartbeat (worker.gpu_telemetry);
    # all null on a CPU worker, or where NVML could not be read: absent, never zero.
    gpu_name: Mapped[str | None] = mapped_column(String(200))
    gpu_utilization: Mapped[float | None] = mapped_column(Float)  # percent, over NVML's window
    gpu_memory_used: Mapped[int | None] = mapped_column(BigInteger)  # bytes
    gpu_memory_total: Mapped[int | None] = mapped_column(BigInteger)  # bytes
    gpu_power_watts: Mapped[float | None] = mapped_column(Float)
    gpu_read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def gpu_reading(self) -> dict[str, Any] | None:
        """The reading as the API shows it, or None when there is none."""
        if self.gpu_read_at is None:
            return None
        return {
            "name": self.gpu_name,
            "utilization": self.gpu_utilization,
            "memory_used": self.gpu_memory_used,
            "memory_total": self.gpu_memory_total,
            "power_watts": self.gpu_power_watts,
            "read_at": self.gpu_read_at,
        }
