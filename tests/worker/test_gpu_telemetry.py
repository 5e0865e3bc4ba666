"""GPU telemetry (issue 19): the worker reads its GPU through NVML with each heartbeat, and
the reading reaches GET /workers, GET /metrics and the run it trains; on a CPU worker it is
absent, never zero. NVML is mocked (pynvml's functions), so this runs on any machine; the
rest is real: the agent's heartbeat written to Postgres, the API reading it."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pynvml
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from moe_lab.cli import app
from moe_lab.client import Client
from tests.client import make_client
from tests.factories import claim, new_experiment
from worker.agent import WorkerAgent
from worker.gpu_telemetry import GpuTelemetry, nvml_index

GIB = 1024**3


@pytest.fixture()
def nvml(monkeypatch):
    """pynvml answering as an H200 at index 3 would; `calls` counts nvmlInit."""
    state = SimpleNamespace(init_calls=0, indices=[], power_supported=True)

    def init():
        state.init_calls += 1

    def handle(index):
        state.indices.append(index)
        return f"handle-{index}"

    def power(handle):
        if not state.power_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 412_500  # milliwatts

    monkeypatch.setattr(pynvml, "nvmlInit", init)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", handle)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: "NVIDIA H200")
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=87, memory=40)
    )
    monkeypatch.setattr(
        pynvml,
        "nvmlDeviceGetMemoryInfo",
        lambda h: SimpleNamespace(used=60 * GIB, total=141 * GIB, free=81 * GIB),
    )
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", power)
    return state


def test_nvml_index_follows_cuda_visible_devices():
    assert nvml_index("cpu", {}) is None
    assert nvml_index("cuda", {}) == 0
    assert nvml_index("cuda:1", {}) == 1
    assert nvml_index(None, {}) == 0  # unset: cuda if available (NVML says if it is)
    # worker.gpu_slot hands a worker GPU 3 as CUDA_VISIBLE_DEVICES=3: torch's cuda:0
    assert nvml_index("cuda:0", {"CUDA_VISIBLE_DEVICES": "3"}) == 3
    assert nvml_index("cuda:1", {"CUDA_VISIBLE_DEVICES": "2,5"}) == 5
    assert nvml_index("cuda:1", {"CUDA_VISIBLE_DEVICES": "2"}) is None
    assert nvml_index("cuda:0", {"CUDA_VISIBLE_DEVICES": "GPU-1a2b"}) is None


def test_a_reading_is_the_gpus_figures(nvml):
    telemetry = GpuTelemetry("cuda:0", {"CUDA_VISIBLE_DEVICES": "3"})
    first, second = telemetry.read(), telemetry.read()
    assert first is not None and second is not None
    assert nvml.indices == [3] and nvml.init_calls == 1  # initialised once, not every beat
    assert first["gpu_name"] == "NVIDIA H200"
    assert first["gpu_utilization"] == 87.0
    assert (first["gpu_memory_used"], first["gpu_memory_total"]) == (60 * GIB, 141 * GIB)
    assert first["gpu_power_watts"] == 412.5
    assert first["gpu_read_at"] <= second["gpu_read_at"]


def test_a_gpu_without_power_readings_keeps_the_rest(nvml):
    nvml.power_supported = False
    reading = GpuTelemetry("cuda:0", {}).read()
    assert reading is not None and reading["gpu_power_watts"] is None
    assert reading["gpu_utilization"] == 87.0


def test_no_nvml_gives_no_reading_and_is_not_asked_again(nvml, monkeypatch, caplog):
    def no_driver():
        nvml.init_calls += 1
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    telemetry = GpuTelemetry("cuda:0", {})
    with caplog.at_level(logging.INFO, logger="worker.gpu_telemetry"):
        assert [telemetry.read() for _ in range(3)] == [None, None, None]
    assert nvml.init_calls == 1
    assert len([r for r in caplog.records if "NVML" in r.getMessage()]) == 1


def test_nvml_erring_after_it_started_says_so_once(nvml, monkeypatch, caplog):
    telemetry = GpuTelemetry("cuda:0", {})
    assert telemetry.read() is not None

    def lost(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lost)
    with caplog.at_level(logging.WARNING, logger="worker.gpu_telemetry"):
        assert [telemetry.read() for _ in range(3)] == [None, None, None]
    assert len([r for r in caplog.records if "NVML" in r.getMessage()]) == 1
    monkeypatch.undo()  # the GPU is back: so are the readings
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda index: "handle")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: "NVIDIA H200")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=50))
    monkeypatch.setattr(
        pynvml, "nvmlDeviceGetMemoryInfo", lambda h: SimpleNamespace(used=1, total=2)
    )
    monkeypatch.setattr(pynvml, "nvmlDeviceGetPowerUsage", lambda h: 100_000)
    assert telemetry.read()["gpu_utilization"] == 50.0


def test_a_cpu_worker_never_asks_nvml(nvml):
    assert GpuTelemetry("cpu", {}).read() is None
    assert nvml.init_calls == 0


def agent(settings, name: str, device: str) -> WorkerAgent:
    beating = WorkerAgent(
        settings=settings.model_copy(update={"device": device}), name=name, queue=None
    )
    beating._register()
    assert beating._beat()
    return beating


def gauges(text: str) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("worker", "")): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("moe_worker_gpu_")
        for sample in family.samples
    }


@pytest.mark.services
def test_the_heartbeat_carries_the_reading_to_workers_metrics_and_the_run(
    deployment, nvml, monkeypatch
):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    settings = deployment()
    url = settings.database_url
    agent(settings, "gpu0@node", "cuda:0")
    agent(settings, "cpu0@node", "cpu")
    on_gpu, on_cpu = new_experiment(url), new_experiment(url)
    claim(url, on_gpu, "node:7:a", worker_name="gpu0@node")
    claim(url, on_cpu, "node:8:b", worker_name="cpu0@node")

    with make_client(settings) as api:
        listed = {w["name"]: w for w in api.get("/workers").json()["items"]}
        exposed = gauges(api.get("/metrics").text)
        gpu_run = api.get(f"/experiments/{on_gpu}").json()
        cpu_run = api.get(f"/experiments/{on_cpu}").json()
        runs = {run["id"]: run for run in api.get("/experiments").json()["items"]}
        shown = CliRunner().invoke(app, ["show", str(on_gpu)], obj=Client(http=api))
        cpu_shown = CliRunner().invoke(app, ["show", str(on_cpu)], obj=Client(http=api))

    reading = listed["gpu0@node"]["gpu"]
    assert reading["name"] == "NVIDIA H200"
    assert reading["utilization"] == 87.0
    assert (reading["memory_used"], reading["memory_total"]) == (60 * GIB, 141 * GIB)
    assert reading["power_watts"] == 412.5
    assert reading["read_at"]
    assert listed["cpu0@node"]["gpu"] is None  # absent, not zero

    assert exposed[("moe_worker_gpu_utilization_percent", "gpu0@node")] == 87.0
    assert exposed[("moe_worker_gpu_memory_used_bytes", "gpu0@node")] == 60 * GIB
    assert exposed[("moe_worker_gpu_memory_total_bytes", "gpu0@node")] == 141 * GIB
    assert exposed[("moe_worker_gpu_power_watts", "gpu0@node")] == 412.5
    assert not [key for key in exposed if key[1] == "cpu0@node"]  # no series at all

    # beside tokens/s on the run page: the run's worker's reading, while it runs
    assert gpu_run["gpu"] == reading
    assert cpu_run["gpu"] is None
    assert runs[on_gpu]["gpu"] == reading and runs[on_cpu]["gpu"] is None
    assert "NVIDIA H200: 87% busy, 60.0/141.0 GiB, 412 W" in shown.stdout
    assert shown.exit_code == cpu_shown.exit_code == 0
    assert not [line for line in cpu_shown.stdout.splitlines() if line.startswith("GPU")]


@pytest.mark.services
def test_a_failing_nvml_never_fails_the_heartbeat(deployment, nvml, monkeypatch):
    settings = deployment()
    gpu = agent(settings, "gpu0@node", "cuda:0")
    with make_client(settings) as api:
        assert api.get("/workers").json()["items"][0]["gpu"]["utilization"] == 87.0

    def lost(handle):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetUtilizationRates", lost)
    assert gpu._beat()  # the heartbeat is written all the same
    with make_client(settings) as api:
        (worker,) = api.get("/workers").json()["items"]
        exposed = gauges(api.get("/metrics").text)
    assert worker["gpu"] is None  # the stale reading is gone, not shown as current
    assert exposed == {}
