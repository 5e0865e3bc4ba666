"""The optional sinks (worker.sinks): a run mirrored into a real `mlflow server` and into
TensorBoard event files, read back with MLflow's client and TensorBoard's reader; a sink
that fails costs the run nothing and is counted on /metrics. Attempts run in-process
(worker.training), on the micro base and the generated corpus."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from sqlalchemy import update
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from local_deployment.servers import MlflowServer, free_port
from moe_core.verdict_records import ServedVerdict
from store import artifacts, system_points
from store.db import session_scope
from store.models import EpochMetrics, Experiment
from store.queue import TrainingQueue
from tests.client import make_client
from tests.factories import new_experiment, record, run_row, system_reading
from tests.record_check import assert_is, leaf_paths
from worker.sinks import (
    MLFLOW_EXPERIMENT,
    TENSORBOARD_DIR,
    MLflowSink,
    RunInfo,
    Sinks,
    TensorBoardSink,
)
from worker.training import run_experiment

pytestmark = pytest.mark.services

FAST = {"num_epochs": 2, "max_train_tokens": 4096, "max_val_tokens": 1024}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


def _attempt(settings, experiment_id: int) -> None:
    run_experiment(experiment_id, settings=settings, queue=TrainingQueue.for_settings(settings))


def _stored_epochs(database: str, experiment_id: int) -> list[EpochMetrics]:
    with session_scope(database) as session:
        return list(
            session.query(EpochMetrics)
            .filter_by(experiment_id=experiment_id)
            .order_by(EpochMetrics.epoch)
        )


def _mlflow_run(client: MlflowClient, database: str, experiment_id: int):
    """The MLflow run tagged with the run's id and key (each test's deployment numbers its
    runs from 1, and they share the MLflow server)."""
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    key = run_row(database, experiment_id).run_key
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`moe_lab.id` = '{experiment_id}' and tags.`moe_lab.run_key` = '{key}'",
    )
    assert len(runs) == 1, runs
    return runs[0]


def _leaves(tree: dict, prefix: str = "verdict.") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else
                   {f"{prefix}{key}": value})  # fmt: skip
    return out


def assert_mirrors(verdict: dict, tags: dict, metrics: dict) -> None:
    """The MLflow run holds the API's verdict (a declared ServedVerdict, so every tag and
    metric names a declared field): each yes/no and text as a tag, each number as a metric,
    and each of its lines' words."""
    assert_is(verdict, ServedVerdict)
    leaves = _leaves(verdict)
    assert {key for key in tags if key.startswith("verdict.") and ".lines." not in key} == {
        key for key, value in leaves.items() if isinstance(value, bool | str)
    }
    numbers = {
        key for key, v in leaves.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    assert {key.replace("/", ".") for key in metrics if key.startswith("verdict/")} == numbers
    assert "verdict.passed" in tags and "verdict.primary.val_loss" in numbers
    assert {key.removeprefix("verdict.") for key in numbers} <= leaf_paths(ServedVerdict)
    for line in verdict["lines"]:
        assert tags[f"verdict.lines.{line['criterion']}"] == line["summary"]


def test_a_run_is_mirrored_into_mlflow_and_tensorboard_event_files(deployment, mlflow_server):
    # system metrics read often enough that a run of seconds keeps some
    settings = deployment(tensorboard=True, mlflow_tracking_uri=mlflow_server.url,
                          system_metrics_interval=0.5)  # fmt: skip
    database = settings.database_url
    dense = new_experiment(database, "dense", dense=True, **FAST)
    _attempt(settings, dense)
    moe = new_experiment(database, "top1", baseline_id=dense, tags=("sweep-a",), **FAST)
    _attempt(settings, moe)
    row = run_row(database, moe)
    assert row.status == "succeeded" and row.mlflow_run_id

    mlflow = MlflowClient(mlflow_server.url)
    run = _mlflow_run(mlflow, database, moe)
    assert run.info.run_id == row.mlflow_run_id and run.info.status == "FINISHED"
    assert run.info.run_name == "top1"
    # params: the resolved ExperimentConfig and BaseConfig, every field
    params = run.data.params
    assert params["config.top_k"] == "1" and params["config.capacity_factor"] == "1.25"
    assert params["config.num_experts"] == "null"  # the base's: JSON, as the API shows it
    assert {key.split(".", 1)[1] for key in params if key.startswith("config.")} == set(row.config)
    assert params["base.num_epochs"] == "2" and params["base.precision"] == row.precision
    assert {key.split(".", 1)[1] for key in params if key.startswith("base.")} == set(row.base)
    # tags: the run's, and what it is
    tags = run.data.tags
    assert tags["moe_lab.id"] == str(moe) and tags["moe_lab.run_key"] == row.run_key
    assert tags["moe_lab.preset"] == "baseline" and tags["moe_lab.dense"] == "false"
    assert tags["moe_lab.tags"] == "sweep-a" and tags["sweep-a"] == "true"
    # per-epoch metrics, each at its epoch, equal to what the store keeps
    epochs = _stored_epochs(database, moe)
    for key, column in (("epoch/val_ce_loss", "val_ce_loss"), ("epoch/train_loss", "train_loss"),
                        ("epoch/tokens_per_sec", "tokens_per_sec")):  # fmt: skip
        history = mlflow.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [
            (e.epoch, pytest.approx(getattr(e, column))) for e in epochs
        ], key
    assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "routing/layer2/entropy")] == [
        1, 2,
    ]  # fmt: skip
    # the verdict against the dense run (which had succeeded): the API's own
    with make_client(settings) as api:
        verdict = api.get(f"/experiments/{moe}/verdict").json()
    assert tags["verdict.passed"] == str(verdict["passed"]).lower()
    assert tags["verdict.primary.passed"] == str(verdict["primary"]["passed"]).lower()
    assert run.data.metrics["verdict/baseline_id"] == dense
    assert_mirrors(verdict, tags, run.data.metrics)
    assert run.data.metrics["result/best_val_ce_loss"] == pytest.approx(row.best_val_ce_loss)
    assert tags["moe_lab.status"] == "succeeded"
    # system metrics: the run's process read as it trained, kept in the store and under
    # MLflow's system/ names, each at its second since the run started
    with session_scope(database) as session:
        kept = system_points.system_points(session=session, experiment_id=moe)
    assert kept and all(p["rss_mb"] > 50 and p["gpu_util"] is None for p in kept)
    history = mlflow.get_metric_history(run.info.run_id, "system/process_memory_rss_megabytes")
    assert [(m.step, m.value) for m in history] == [
        (int(p["elapsed_s"]), pytest.approx(p["rss_mb"])) for p in kept
    ]
    assert "system/gpu_0_utilization_percentage" not in run.data.metrics  # a CPU run
    # the dense run has no verdict to log
    dense_run = _mlflow_run(mlflow, database, dense)
    assert dense_run.data.tags["moe_lab.dense"] == "true"
    assert not any(key.startswith("verdict") for key in dense_run.data.tags)

    # TensorBoard: the run's event files, read with TensorBoard's own reader
    directory = artifacts.run_dir(settings, row.run_key) / TENSORBOARD_DIR
    events = EventAccumulator(str(directory))
    events.Reload()
    for tag, column in (("epoch/val_ce_loss", "val_ce_loss"), ("epoch/train_ce_loss",
                        "train_ce_loss"), ("epoch/train_aux_loss", "train_aux_loss")):  # fmt: skip
        scalars = events.Scalars(tag)
        assert [(s.step, s.value) for s in scalars] == [
            (e.epoch, pytest.approx(getattr(e, column), rel=1e-6)) for e in epochs
        ], tag
    # listed among the run's artifacts, and served
    with make_client(settings) as api:
        listed = api.get(f"/experiments/{moe}/artifacts").json()["items"]
        files = [item["name"] for item in listed if item["name"].startswith("tensorboard/")]
        assert files and all(item["partial"] is False for item in listed)
        served = api.get(f"/experiments/{moe}/artifacts/{files[0]}")
        assert served.status_code == 200
        assert served.content == (directory / files[0].split("/", 1)[1]).read_bytes()
        # only event files are served from there
        assert api.get(f"/experiments/{moe}/artifacts/tensorboard/run.log").status_code == 422


def test_a_run_that_ends_before_its_dense_run_gets_its_verdict_when_dense_ends(
    deployment, mlflow_server
):
    settings = deployment(mlflow_tracking_uri=mlflow_server.url)
    database = settings.database_url
    dense = new_experiment(database, "dense", dense=True, **FAST)
    moe = new_experiment(database, "early", baseline_id=dense, **FAST)
    # the fair queue takes one user's runs in submission order: an admin's priority puts
    # the MoE run first
    with session_scope(database) as session:
        session.execute(update(Experiment).where(Experiment.id == moe).values(priority=1))
        session.commit()
    _attempt(settings, moe)  # the MoE run ends first: no verdict to give yet
    mlflow = MlflowClient(mlflow_server.url)
    early = _mlflow_run(mlflow, database, moe)
    assert early.info.status == "FINISHED"
    assert not any(key.startswith("verdict") for key in early.data.tags)

    _attempt(settings, dense)  # now there is one, and it reaches the MoE run's MLflow run
    late = mlflow.get_run(early.info.run_id)
    with make_client(settings) as api:
        verdict = api.get(f"/experiments/{moe}/verdict").json()
    assert late.data.tags["verdict.passed"] == str(verdict["passed"]).lower()
    assert late.data.tags["verdict.primary.passed"] == str(verdict["primary"]["passed"]).lower()
    assert late.data.metrics["verdict/baseline_id"] == dense
    assert late.data.metrics["verdict/primary/val_loss"] == pytest.approx(
        verdict["primary"]["val_loss"]
    )
    assert_mirrors(verdict, late.data.tags, late.data.metrics)
    assert late.info.status == "FINISHED" and late.data.tags["moe_lab.status"] == "succeeded"
    # logged once, not again by anything after
    assert len(mlflow.get_metric_history(late.info.run_id, "verdict/baseline_id")) == 1
    dense_run = _mlflow_run(mlflow, database, dense)
    assert not any(key.startswith("verdict") for key in dense_run.data.tags)


def test_a_failing_sink_fails_no_run_and_is_counted_on_metrics(deployment, monkeypatch):
    # Nothing listens there: every request of MLflow's client is refused (no retries, fast).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = deployment(mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    moe = new_experiment(settings.database_url, "unlucky", **FAST)
    _attempt(settings, moe)

    row = run_row(settings.database_url, moe)
    assert row.status == "succeeded" and row.current_epoch == 2 and row.mlflow_run_id is None
    with make_client(settings) as api:
        metrics = api.get("/metrics").text
    # counted once: the sink is dropped for the rest of the attempt after its first failure
    assert 'moe_sink_failures_total{sink="mlflow"} 1.0' in metrics
    assert 'moe_sink_failures_total{sink="tensorboard"} 0.0' in metrics
    log = (artifacts.run_dir(settings, row.run_key) / artifacts.LOG).read_text()
    assert "mlflow sink failed in start; the run goes on without it" in log
    assert "ConnectionError" in log or "ConnectionRefused" in log  # the exception, logged


def _run_info(tmp_path, run_key: str, mlflow_run_id: str | None = None) -> RunInfo:
    return RunInfo(
        experiment_id=7, name="unit", run_key=run_key, directory=tmp_path,
        config={"num_experts": 8}, base={"num_epochs": 1}, mlflow_run_id=mlflow_run_id,
    )  # fmt: skip


# the per-step contract (moe_core.records.StepPoint): the run's optimizer step from 1
POINTS = [
    {"step": step, "epoch": 1, "tokens": 512 * step, "wall_time": 0.1 * step,
     "loss": 5.0 - 0.1 * step, "ce_loss": 4.9 - 0.1 * step, "aux_loss": 0.1,
     "learning_rate": 1e-3 * step, "grad_norm": 1.5, "tokens_per_sec": 1000.0 + step}
    for step in (1, 2, 3)
]  # fmt: skip


def test_steps_feed_per_step_metrics_into_both_sinks(tmp_path, mlflow_server):
    remembered = []
    mlflow_sink = MLflowSink(mlflow_server.url, remembered.append)
    sinks = Sinks([TensorBoardSink(), mlflow_sink])
    sinks.start(_run_info(tmp_path, "steps-unit"))
    sinks.steps(POINTS[:2])
    sinks.steps(POINTS[2:])
    readings = [system_reading(3, cpu=120.0), system_reading(6, cpu=95.5)]
    sinks.system(readings)  # every few seconds, from the sampler's thread
    sinks.epoch(record(1, 4.5))
    sinks.finish("succeeded", None, None)
    assert remembered == [mlflow_sink.run_id]

    client = MlflowClient(mlflow_server.url)
    for key in ("loss", "ce_loss", "aux_loss", "learning_rate", "grad_norm", "tokens_per_sec"):
        history = client.get_metric_history(mlflow_sink.run_id, f"step/{key}")
        assert [(m.step, m.value) for m in history] == [
            (p["step"], pytest.approx(p[key])) for p in POINTS
        ], key
    assert client.get_run(mlflow_sink.run_id).info.status == "FINISHED"
    # system metrics under MLflow's own names: at their second, stamped when read
    cpu = client.get_metric_history(mlflow_sink.run_id, "system/cpu_utilization_percentage")
    assert [(m.step, m.value, m.timestamp) for m in cpu] == [
        (3, 120.0, int(readings[0]["t"].timestamp() * 1000)),
        (6, 95.5, int(readings[1]["t"].timestamp() * 1000)),
    ]
    assert "system/gpu_0_power_usage_watts" not in client.get_run(mlflow_sink.run_id).data.metrics

    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("system/process_memory_rss_megabytes")] == [
        (3, 512.0), (6, 512.0)
    ]  # fmt: skip
    assert [(s.step, s.value) for s in events.Scalars("step/learning_rate")] == [
        (p["step"], pytest.approx(p["learning_rate"])) for p in POINTS
    ]
    assert [(s.step, s.value) for s in events.Scalars("epoch/val_ce_loss")] == [
        (1, pytest.approx(4.49))
    ]


def test_a_resumed_attempt_continues_the_same_mlflow_run(tmp_path, mlflow_server):
    client = MlflowClient(mlflow_server.url)
    first = MLflowSink(mlflow_server.url, lambda _: None)
    first.start(_run_info(tmp_path, "resumed-unit"))
    first.epoch(record(1, 4.5))
    first.close()  # the attempt died before the run ended: its MLflow run stays RUNNING
    # the next attempt knows the id (the store kept it) ...
    second = MLflowSink(mlflow_server.url, lambda _: None)
    second.start(_run_info(tmp_path, "resumed-unit", mlflow_run_id=first.run_id))
    second.epoch(record(2, 4.4))
    # ... or, had the first died before storing it, finds it by its run key
    remembered = []
    third = MLflowSink(mlflow_server.url, remembered.append)
    third.start(_run_info(tmp_path, "resumed-unit"))
    third.finish("failed", None, None)
    assert first.run_id == second.run_id == third.run_id and remembered == [first.run_id]
    history = client.get_metric_history(first.run_id, "epoch/val_ce_loss")
    assert [m.step for m in history] == [1, 2]
    assert client.get_run(first.run_id).info.status == "FAILED"


class Broken:
    name = "mlflow"

    def __init__(self) -> None:
        self.calls = []

    def start(self, run):
        self.calls.append("start")

    def steps(self, points):
        self.calls.append("steps")
        raise RuntimeError("tracking server said no")

    def epoch(self, record):
        self.calls.append("epoch")

    def finish(self, status, result, verdict):
        self.calls.append("finish")

    def close(self):
        self.calls.append("close")


def test_a_sink_that_raises_is_reported_once_and_dropped_the_others_go_on(tmp_path):
    broken, failures = Broken(), []
    tensorboard = TensorBoardSink()
    sinks = Sinks([broken, tensorboard], lambda sink, error: failures.append((sink, error)))
    sinks.start(_run_info(tmp_path, "isolation"))
    sinks.steps(POINTS)
    sinks.steps(POINTS)  # not called again
    sinks.epoch(record(1, 4.5))
    sinks.finish("succeeded", None, None)
    assert broken.calls == ["start", "steps", "close"]
    assert failures == [("mlflow", "steps: RuntimeError: tracking server said no")]
    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    assert [s.step for s in events.Scalars("step/loss")] == [1, 2, 3, 1, 2, 3]
