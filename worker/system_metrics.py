"""A run's system metrics as a history: every `system_metrics_interval` seconds (MOE_...,
default 5) the process that trains the run reads its own CPU utilisation and resident
memory, and its GPU's utilisation, memory used and power (worker.gpu_telemetry, NVML), and
writes them to the store (store.system_points) and to the run's sinks (worker.sinks), as
W&B and MLflow keep a run's system metrics.

What is measured:
- CPU: the process's CPU time over the interval, in percent of one core (as top and
  psutil count: 250 is two and a half cores busy); memory: its resident set (VmRSS).
  Read from /proc/<pid>/stat and /proc/<pid>/status on Linux. Elsewhere the CPU comes from
  os.times() (this process only) and the memory is not read (null, shown absent).
- A run on several GPUs or CPU processes (torchrun, worker.ranks): rank 0's process reads,
  and sums the CPU and memory of every rank (its sibling processes under torchrun; pages
  the ranks share count once per rank, as RSS does); the GPU figures are rank 0's GPU only.
- GPU: the whole device's (NVML has no per-process utilisation), so runs sharing a GPU
  (MOE_RUNS_PER_GPU > 1) each see their neighbours' load too. On a CPU run: null.

A reading is taken on a thread of its own beside training and never fails the run: a write
the database refuses is tried again with the next reading; once the run is not ours any
more the sampler stops.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from store import system_points
from store.db import session_scope
from store.leases import LostOwnership
from store.models import utcnow
from store.settings import Settings
from store.system_points import SystemReading
from worker.gpu_telemetry import GpuTelemetry

log = logging.getLogger(__name__)

PROC = Path("/proc")
MiB = 1024 * 1024


def _ranks_running() -> bool:
    """Whether this process is one of several ranks torchrun started (worker.launch)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1


def _children(pid: int, proc: Path) -> list[int]:
    """The processes `pid` started: the kernel's list where it keeps one, else a scan."""
    try:
        return [
            int(c) for c in (proc / str(pid) / "task" / str(pid) / "children").read_text().split()
        ]
    except OSError:
        pass
    found = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
    return found


class ProcessReader:
    """CPU and resident memory of the training process (and under torchrun, of each of its
    ranks, summed). `read()` gives (cpu_percent, rss_mb): the CPU over the time since the
    last read (None on the first), the memory now."""

    def __init__(self, proc: Path = PROC, *, ranks: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.proc = proc
        self.linux = (proc / "self" / "stat").exists()
        self.ranks = _ranks_running() if ranks is None else ranks
        self._clock = clock
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._before: tuple[float, dict[int, float]] | None = None  # (when, cpu s by pid)

    def pids(self) -> list[int]:
        me = os.getpid()
        if not (self.linux and self.ranks):
            return [me]
        return sorted({me, *_children(os.getppid(), self.proc)})  # torchrun's ranks

    def _cpu_seconds(self, pid: int) -> float:
        if not self.linux:
            times = os.times()
            return times.user + times.system
        fields = (self.proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks  # utime, stime

    def _rss_mb(self, pid: int) -> float | None:
        if not self.linux:
            return None
        for line in (self.proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
        return None  # a zombie has no VmRSS

    def read(self) -> tuple[float | None, float | None]:
        now = self._clock()
        cpu: dict[int, float] = {}
        rss: float | None = None
        for pid in self.pids():
            try:
                cpu[pid] = self._cpu_seconds(pid)
                mb = self._rss_mb(pid)
            except (OSError, IndexError, ValueError):
                continue  # a rank ended meanwhile
            if mb is not None:
                rss = (rss or 0.0) + mb
        percent = None
        if self._before is not None and now > self._before[0]:
            then, before = self._before
            used = sum(s - before[p] for p, s in cpu.items() if p in before)
            percent = max(0.0, 100.0 * used / (now - then))
        self._before = (now, cpu)
        return percent, rss


def reading(
    *, t: datetime, elapsed_s: float, position: tuple[int | None, float | None],
    process: tuple[float | None, float | None], gpu: dict[str, Any] | None,
) -> SystemReading:  # fmt: skip
    """One reading from its parts (gpu: worker.gpu_telemetry's, or None)."""
    gpu = gpu or {}
    memory = gpu.get("gpu_memory_used")
    return {"t": t, "elapsed_s": round(elapsed_s, 3), "step": position[0],
            "epoch": position[1], "cpu_percent": process[0], "rss_mb": process[1],
            "gpu_util": gpu.get("gpu_utilization"),
            "gpu_mem_mb": memory / MiB if memory is not None else None,
            "gpu_power_w": gpu.get("gpu_power_watts")}  # fmt: skip


class SystemSampler:
    """The sampling thread of one attempt: `with SystemSampler(...):` around training.
    `position()` says where training stands: (optimizer steps done, epochs); `on_points`
    (the sinks) gets each batch of readings once the store has them."""

    def __init__(
        self, experiment_id: int, *, owner: str, settings: Settings, device: str,
        position: Callable[[], tuple[int | None, float | None]],
        on_points: Callable[[list[SystemReading]], None] = lambda points: None,
        process: ProcessReader | None = None, gpu: GpuTelemetry | None = None,
    ) -> None:  # fmt: skip
        self.experiment_id = experiment_id
        self.owner = owner
        self.settings = settings
        self.interval = settings.system_metrics_interval
        self._position = position
        self._on_points = on_points
        self._process = process or ProcessReader()
        self._gpu = gpu or GpuTelemetry(device)
        self._pending: list[SystemReading] = []
        self._started: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.lost = False

    def __enter__(self) -> SystemSampler:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"system-{self.experiment_id}")  # fmt: skip
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        self._process.read()  # the CPU's baseline: the first percentage needs an interval
        # no last reading as the attempt ends: by then the run has ended (or gone back to
        # the queue), and its fenced write would land nothing
        while not self._stop.wait(self.interval) and not self.lost:
            self.sample()

    def sample(self) -> None:
        """Take one reading and write what is pending (never raises)."""
        try:
            now = utcnow()
            if self._started is None:
                with session_scope(self.settings.database_url) as session:
                    self._started = system_points.started_at(
                        session=session, experiment_id=self.experiment_id) or now  # fmt: skip
            self._pending.append(reading(
                t=now, elapsed_s=(now - self._started).total_seconds(),
                position=self._position(), process=self._process.read(), gpu=self._gpu.read(),
            ))  # fmt: skip
            self.write()
        except Exception:
            if not self._failing:  # once a streak: an outage must not fill the run's log
                log.warning("experiment %s: system metrics not read", self.experiment_id,
                            exc_info=True)  # fmt: skip
            self._failing = True
        else:
            self._failing = False

    def write(self) -> None:
        points, self._pending = self._pending, []
        try:
            with session_scope(self.settings.database_url) as session:
                thinned = system_points.record_system_points(
                    session=session, experiment_id=self.experiment_id, owner=self.owner,
                    points=points, max_points=self.settings.system_points_max,
                )  # fmt: skip
        except (OperationalError, InterfaceError):
            self._pending[:0] = points[-self.settings.system_points_max :]  # the next try
            return
        except LostOwnership:
            self.lost = True  # ended, or taken over: the lease settles it
            return
        if thinned:
            self.interval *= 2  # the history halved: keep its density even
        self._on_points(points)
