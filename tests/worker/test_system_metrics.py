"""System metrics as a history (worker.system_metrics): the sampler keeps this process's CPU
and memory every few seconds beside busy work; the readers sum torchrun's ranks
(a /proc of the test's making) and read the GPU through NVML (mocked, as in
test_gpu_telemetry); the sampler thins its interval past the cap and stops once the run is
not its own."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import cast

import pynvml
import pytest

from store import system_points
from store.db import session_scope
from store.models import utcnow
from store.queue import TrainingQueue
from store.settings import Settings
from tests.factories import claim, new_experiment
from worker.gpu_telemetry import GpuTelemetry
from worker.lease import RunLease
from worker.system_metrics import ProcessReader, SystemSampler, reading

pytestmark = pytest.mark.services

MiB = 1024 * 1024


def _points(database: str, experiment_id: int) -> list[dict]:
    with session_scope(database) as session:
        return list(system_points.system_points(session=session, experiment_id=experiment_id))


def test_the_sampler_beside_busy_work_keeps_this_process_cpu_and_memory(database_url):
    """The sampler as worker.training runs it beside training (a full micro run through the
    worker path records them too: test_sinks' first test checks its points and its MLflow
    system metrics), here beside a loop that keeps a core busy."""
    database = database_url  # Postgres: the store's own tests cover SQLite too
    run = new_experiment(database)
    claim(database, run, "a")
    settings = Settings(database_url=database, system_metrics_interval=0.1)
    with SystemSampler(run, owner="a", settings=settings, device="cpu",
                       position=lambda: (None, 0.0)):  # fmt: skip
        deadline = time.monotonic() + 30  # a loaded machine reads less often: wait for 3
        while len(_points(database, run)) < 3 and time.monotonic() < deadline:
            sum(i * i for i in range(100_000))
    points = _points(database, run)
    assert len(points) >= 3, points
    assert [p["elapsed_s"] for p in points] == sorted(p["elapsed_s"] for p in points)
    assert all(p["rss_mb"] > 50 for p in points)  # the test process, torch and all
    # the busy loop's share of a core, however loaded the machine (the arithmetic is
    # checked exactly on a /proc of the test's making, below)
    cpus = [p["cpu_percent"] for p in points]
    assert max(cpus) > 0 and all(0 <= c <= 100 * (os.cpu_count() or 1) * 1.1 for c in cpus)
    assert all(p["gpu_util"] is None and p["gpu_power_w"] is None for p in points)  # no GPU


def _proc(root, pid: int, *, ticks: int, rss_kb: int) -> None:
    (root / str(pid)).mkdir(exist_ok=True)
    fields = ["S", "1"] + ["0"] * 9 + [str(ticks), "0"] + ["0"] * 30  # utime at 14, stime 15
    (root / str(pid) / "stat").write_text(f"{pid} (python -m w) {' '.join(fields)}\n")
    (root / str(pid) / "status").write_text(f"Name:\tpython\nVmRSS:\t  {rss_kb} kB\n")


def test_rank_zero_sums_its_sibling_ranks_cpu_and_memory(tmp_path):
    me, torchrun, sibling = os.getpid(), os.getppid(), 999_999
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "stat").write_text("")
    (tmp_path / str(torchrun) / "task" / str(torchrun)).mkdir(parents=True)
    (tmp_path / str(torchrun) / "task" / str(torchrun) / "children").write_text(f"{me} {sibling}")
    ticks = os.sysconf("SC_CLK_TCK")
    _proc(tmp_path, me, ticks=0, rss_kb=512 * 1024)
    _proc(tmp_path, sibling, ticks=0, rss_kb=256 * 1024)
    clock = iter([10.0, 12.0])
    reader = ProcessReader(tmp_path, ranks=True, clock=lambda: next(clock))
    assert reader.read() == (None, 768.0)  # no CPU without an interval yet
    _proc(tmp_path, me, ticks=2 * ticks, rss_kb=512 * 1024)  # one core for 2 s
    _proc(tmp_path, sibling, ticks=ticks, rss_kb=256 * 1024)  # half a core
    assert reader.read() == (pytest.approx(150.0), 768.0)
    # a single process reads itself alone
    assert ProcessReader(tmp_path, ranks=False).pids() == [me]


def test_a_gpu_reading_comes_through_nvml(monkeypatch):
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda index: f"handle-{index}")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: "NVIDIA H200")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=87))
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo",
                        lambda h: SimpleNamespace(used=6000 * MiB, total=141_000 * MiB))  # fmt: skip
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", lambda h: 412_500)  # milliwatts
    gpu = GpuTelemetry("cuda:0", {}).read()
    point = reading(t=utcnow(), elapsed_s=1.0, position=(10, 0.5), process=(None, 1.0), gpu=gpu)
    assert (point["gpu_util"], point["gpu_mem_mb"], point["gpu_power_w"]) == (87.0, 6000.0, 412.5)


class _Still(ProcessReader):
    """A reader that reads the same each time (the sampler's unit test)."""

    def __init__(self) -> None:
        pass

    def read(self):
        return (50.0, 100.0)


def test_the_sampler_doubles_its_interval_past_the_cap_and_stops_when_not_its_run(database_url):
    database = database_url  # Postgres: the store's own tests cover SQLite too
    run = new_experiment(database)
    claim(database, run, "a")
    settings = Settings(database_url=database, system_metrics_interval=5.0, system_points_max=10)
    sent = []
    sampler = SystemSampler(run, owner="a", settings=settings, device="cpu",
                            position=lambda: (1, 0.1), on_points=sent.extend, process=_Still(),
                            gpu=GpuTelemetry("cpu"))  # fmt: skip
    for _ in range(11):
        sampler.sample()
    assert len(_points(database, run)) == 6 and sampler.interval == 10.0
    assert len(sent) == 11 and sent[0]["cpu_percent"] == 50.0 and sent[0]["t"] <= utcnow()
    claim(database, run, "b", dead=("a",), stale_after=0)  # taken over
    sampler.sample()
    assert sampler.lost and len(_points(database, run)) == 6


def test_a_reading_says_where_training_stood():
    """RunLease.position, from the Trainer's progress: steps done and epochs."""
    lease = RunLease(1, settings=Settings(database_url="sqlite://"),
                     queue=cast(TrainingQueue, None), worker_name=None, device="cpu")  # fmt: skip
    assert lease.position() == (None, None)
    lease.preparing_data(epoch=1, num_epochs=4)  # a first attempt: nothing done yet
    assert lease.position() == (0, 0.0)
    lease.preparing_data(epoch=3, num_epochs=4)  # resumed after two epochs: their size unknown
    assert lease.position() == (None, 2.0)
    lease.report_progress({"phase": "training", "epoch": 3, "step": 5, "steps_per_epoch": 10,
                           "tokens": 2560})  # fmt: skip
    assert lease.position() == (25, 2.5)
