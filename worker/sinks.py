"""Optional sinks: each run also written where researchers' own tools read it. Off by
default, set per deployment (store.settings):

- `MOE_TENSORBOARD=true`: TensorBoard event files in the run's artifacts, `tensorboard/`
  (listed and served by GET /experiments/{id}/artifacts);
- `MOE_MLFLOW_TRACKING_URI=...`: each run mirrored into an MLflow run of the experiment
  `moe-lab`: params, per-step and per-epoch metrics, system metrics (`system/...`, MLflow's
  own prefix, so its UI shows them as the run's system metrics), tags, and at the end its
  verdict and status. An attempt after a crash goes on logging into the same MLflow run.

A sink is never the run's business: `Sinks` wraps every call, and a sink that raises is
logged once with its exception, counted (GET /metrics: moe_sink_failures_total{sink=...})
and dropped for the rest of the attempt; training goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from moe_core.records import EpochRecord, StepPoint
from moe_core.verdict_records import ServedVerdict
from store.system_points import SystemReading

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # under the run's artifact directory
MLFLOW_EXPERIMENT = "moe-lab"
# The keys of a per-step point (moe_core.records.StepPoint, the Trainer's on_steps): the
# step is the run's optimizer step from 1; these are its figures.
STEP_FIGURES = ("loss", "ce_loss", "aux_loss", "learning_rate", "grad_norm", "tokens_per_sec")
# A system reading's figures (store.system_points) under MLflow's names for its own system
# metrics; the memory is the training process's resident set, not the machine's.
SYSTEM_NAMES = {
    "cpu_percent": "system/cpu_utilization_percentage",
    "rss_mb": "system/process_memory_rss_megabytes",
    "gpu_util": "system/gpu_0_utilization_percentage",
    "gpu_mem_mb": "system/gpu_0_memory_usage_megabytes",
    "gpu_power_w": "system/gpu_0_power_usage_watts",
}


@dataclass(frozen=True)
class RunInfo:
    """What a sink knows of the run it mirrors, read from its row when an attempt starts."""

    experiment_id: int
    name: str
    run_key: str
    directory: Path  # the run's artifact directory
    config: dict[str, Any]  # the resolved ExperimentConfig
    base: dict[str, Any]  # the resolved BaseConfig
    dense: bool = False
    preset: str | None = None
    study: str | None = None
    tags: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None  # set by an earlier attempt


class Sink(Protocol):
    name: str

    def start(self, run: RunInfo) -> None: ...
    def steps(self, points: Sequence[StepPoint]) -> None: ...
    # every few seconds, from another thread than the rest (worker.system_metrics)
    def system(self, points: Sequence[SystemReading]) -> None: ...
    def epoch(self, record: EpochRecord) -> None: ...
    def finish(
        self, status: str, result: Mapping[str, Any] | None, verdict: ServedVerdict | None
    ) -> None: ...
    # a dense run that succeeded: (MLflow run id, verdict) of runs that ended before it
    def late_verdicts(self, verdicts: Sequence[tuple[str, ServedVerdict]]) -> None: ...
    def close(self) -> None: ...  # the attempt ends unfinished (handed back, taken over)


# ------------------------------------------------------------------ the figures, named once


def step_scalars(point: StepPoint) -> dict[str, float]:
    return _finite({f"step/{key}": point.get(key) for key in STEP_FIGURES})


def system_scalars(point: SystemReading) -> dict[str, float]:
    """A reading's figures (those read: a CPU run has no GPU's) by their MLflow names."""
    return _finite({name: point.get(key) for key, name in SYSTEM_NAMES.items()})


def epoch_scalars(record: EpochRecord) -> dict[str, float]:
    """An epoch's figures as scalars: losses, throughput, and each MoE layer's routing of
    the validation set (entropy, the least and most used expert's share, drops)."""
    scalars: dict[str, Any] = {}
    fields: Mapping[str, Any] = record  # read by the names below
    for split in ("train", "val"):
        for key, value in (fields.get(split) or {}).items():
            scalars[f"epoch/{split}_{key}"] = value
    scalars["epoch/train_eval_ce_loss"] = (fields.get("train_eval") or {}).get("ce_loss")
    for key in ("tokens_per_sec", "duration", "gating_temperature"):
        scalars[f"epoch/{key}"] = record.get(key)
    for layer in record.get("eval_expert_stats") or []:
        for key in ("entropy", "min_usage", "max_usage", "dropped"):
            scalars[f"routing/layer{layer['layer']}/{key}"] = layer.get(key)
    return _finite(scalars)


def _finite(scalars: Mapping[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in scalars.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def _leaves(tree: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# ------------------------------------------------------------------ TensorBoard


class TensorBoardSink:
    """Event files in the run's `tensorboard/`: `tensorboard --logdir <artifacts>/runs`
    shows every run, each attempt adding a file to its run's folder."""

    name = "tensorboard"

    def __init__(self) -> None:
        self._writer: Any = None

    def start(self, run: RunInfo) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run.directory / TENSORBOARD_DIR))
        self._writer.add_text("run", f"experiment {run.experiment_id} `{run.name}`")

    def steps(self, points: Sequence[StepPoint]) -> None:
        for point in points:
            for tag, value in step_scalars(point).items():
                self._writer.add_scalar(tag, value, int(point["step"]))

    def system(self, points: Sequence[SystemReading]) -> None:
        # x: seconds since the run started, as the dashboard draws them by wall time
        for point in points:
            for tag, value in system_scalars(point).items():
                self._writer.add_scalar(tag, value, int(point["elapsed_s"]),
                                        walltime=point["t"].timestamp())  # fmt: skip

    def epoch(self, record: EpochRecord) -> None:
        for tag, value in epoch_scalars(record).items():
            self._writer.add_scalar(tag, value, record["epoch"])
        self._writer.flush()  # readable while the run goes on

    def finish(
        self, status: str, result: Mapping[str, Any] | None, verdict: ServedVerdict | None
    ) -> None:
        self._writer.add_text("status", status)
        if verdict is not None:
            self._writer.add_text("verdict", f"```\n{json.dumps(verdict, indent=1)}\n```")
        self.close()

    def late_verdicts(self, verdicts: Sequence[tuple[str, ServedVerdict]]) -> None:
        pass  # another run's event files are written only while it trains

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ------------------------------------------------------------------ MLflow

# moe-lab's ending -> MLflow's run status
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
_BATCH = 1000  # MLflow's most metrics in one log_batch (and 100 params)


class MLflowSink:
    """One MLflow run per run, found again by the id the store keeps (`remember` stores it)
    or, should an attempt have died between creating it and storing its id, by its tag
    moe_lab.run_key."""

    name = "mlflow"

    def __init__(self, tracking_uri: str, remember: Callable[[str], None]) -> None:
        # MLflow's client retries an unreachable server for minutes by default; a sink must
        # not stall training that long before it is dropped. The environment still rules.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        self.tracking_uri = tracking_uri
        self._remember = remember
        self._client: Any = None
        self.run_id: str | None = None

    def start(self, run: RunInfo) -> None:
        from mlflow import MlflowClient

        self._client = client = MlflowClient(self.tracking_uri)
        experiment_id = self._experiment_id()
        run_id = run.mlflow_run_id or self._find(experiment_id, run.run_key)
        if run_id is None:
            created = client.create_run(experiment_id, run_name=run.name, tags=_tags(run))
            run_id = created.info.run_id
            from mlflow.entities import Param

            params = [Param(key, _param_value(value)) for key, value in _params(run)]
            for at in range(0, len(params), 100):
                client.log_batch(run_id, params=params[at : at + 100])
        elif client.get_run(run_id).info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")  # a resumed attempt
        self.run_id = run_id
        if run_id != run.mlflow_run_id:
            self._remember(run_id)

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self._client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        if found is not None:
            return found.experiment_id
        try:
            return self._client.create_experiment(MLFLOW_EXPERIMENT)
        except MlflowException:  # another worker created it just now
            return self._client.get_experiment_by_name(MLFLOW_EXPERIMENT).experiment_id

    def _find(self, experiment_id: str, run_key: str) -> str | None:
        runs = self._client.search_runs(
            [experiment_id], filter_string=f"tags.`moe_lab.run_key` = '{run_key}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def _log(
        self, scalars: Iterator[tuple[str, float, int]], run_id: str | None = None,
        at: float | None = None,
    ) -> None:  # fmt: skip
        """Log (key, value, step) metrics, timestamped `at` (seconds; default now)."""
        from mlflow.entities import Metric

        now = int((time.time() if at is None else at) * 1000)
        metrics = [Metric(key, value, now, step) for key, value, step in scalars]
        for at in range(0, len(metrics), _BATCH):
            self._client.log_batch(run_id or self.run_id, metrics=metrics[at : at + _BATCH])

    def steps(self, points: Sequence[StepPoint]) -> None:
        self._log(
            (key, value, int(point["step"]))
            for point in points
            for key, value in step_scalars(point).items()
        )

    def system(self, points: Sequence[SystemReading]) -> None:
        # step: seconds since the run started; timestamp: when it was read
        if self.run_id is None:
            return  # read before the MLflow run was found or made: not for it
        for point in points:
            step = int(point["elapsed_s"])
            self._log(((key, value, step) for key, value in system_scalars(point).items()),
                      at=point["t"].timestamp())  # fmt: skip

    def epoch(self, record: EpochRecord) -> None:
        self._log((key, value, record["epoch"]) for key, value in epoch_scalars(record).items())

    def finish(
        self, status: str, result: Mapping[str, Any] | None, verdict: ServedVerdict | None
    ) -> None:
        assert self.run_id is not None, "finish() before start()"
        final = _result_metrics(result)
        if verdict is not None:
            final.update(self._verdict_tags(self.run_id, verdict))
        self._log((key, value, 0) for key, value in _finite(final).items())
        self._client.set_tag(self.run_id, "moe_lab.status", status)
        self._client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "FAILED"))

    def late_verdicts(self, verdicts: Sequence[tuple[str, ServedVerdict]]) -> None:
        """This dense run has succeeded: the verdicts of the runs judged against it that
        ended before it, into their own (finished) MLflow runs."""
        for run_id, verdict in verdicts:
            metrics = _finite(self._verdict_tags(run_id, verdict))
            self._log(((key, value, 0) for key, value in metrics.items()), run_id)

    def _verdict_tags(self, run_id: str, verdict: ServedVerdict) -> dict[str, Any]:
        """Set the verdict's yes/no and words as tags of `run_id` (its lines as the API
        serves them: `verdict.lines.primary`, ...); return its numbers, to be logged as
        metrics."""
        leaves = dict(_leaves(verdict, "verdict."))
        for key, value in leaves.items():
            if isinstance(value, bool | str):  # numbers are metrics; None says nothing
                self._client.set_tag(run_id, key, str(value).lower()[:5000])
        for line in verdict["lines"]:
            self._client.set_tag(
                run_id, f"verdict.lines.{line['criterion']}", line["summary"][:5000]
            )
        return {key.replace(".", "/"): value for key, value in leaves.items()}

    def close(self) -> None:
        pass  # the MLflow run stays RUNNING: the next attempt goes on with it


def _result_metrics(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """The result's headline figures (its per-epoch histories are already logged)."""
    if not result:
        return {}
    metrics = result.get("metrics") or {}
    test = result.get("test") or {}
    return {
        "result/params": result.get("params"),
        "result/active_params": result.get("active_params"),
        "result/best_val_loss": metrics.get("best_val_loss"),
        "result/best_val_ce_loss": metrics.get("best_val_ce_loss"),
        "result/test_loss": test.get("loss"),
        "result/test_ce_loss": test.get("ce_loss"),
    }


def _tags(run: RunInfo) -> dict[str, str]:
    tags = {
        "moe_lab.id": str(run.experiment_id),
        "moe_lab.run_key": run.run_key,
        "moe_lab.dense": str(run.dense).lower(),
        "moe_lab.tags": ",".join(run.tags),
    }
    if run.preset is not None:
        tags["moe_lab.preset"] = run.preset
    if run.study is not None:
        tags["moe_lab.study"] = run.study
    # each of the run's tags as a tag of its own, to filter on (tags.`baseline-sweep` = 'true')
    tags.update({tag: "true" for tag in run.tags})
    return tags


def _params(run: RunInfo) -> Iterator[tuple[str, Any]]:
    for prefix, values in (("config", run.config), ("base", run.base)):
        for key, value in values.items():
            yield f"{prefix}.{key}", value


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]  # MLflow's longest param value


# ------------------------------------------------------------------ isolation


class Sinks:
    """The sinks of one attempt, each call wrapped: a sink that raises is logged once with
    its exception, reported to `on_failure(sink, error)` (the store counts it) and dropped
    for the rest of the attempt."""

    def __init__(
        self, sinks: Sequence[Sink], on_failure: Callable[[str, str], None] | None = None
    ) -> None:
        self._live = list(sinks)
        self._on_failure = on_failure

    def __bool__(self) -> bool:
        return bool(self._live)

    def _call(self, method: str, *args: Any) -> None:
        for sink in list(self._live):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:
                if sink not in self._live:
                    continue  # failed in the other thread (system metrics) just now
                self._live.remove(sink)
                log.warning("%s sink failed in %s; the run goes on without it", sink.name,
                            method, exc_info=True)  # fmt: skip
                try:
                    if self._on_failure is not None:
                        self._on_failure(sink.name, f"{method}: {type(exc).__name__}: {exc}")
                except Exception:
                    log.warning("the %s sink's failure was not counted", sink.name, exc_info=True)
                try:
                    sink.close()
                except Exception:
                    pass  # already failed and reported; closing is best effort

    def start(self, run: RunInfo) -> None:
        self._call("start", run)

    def steps(self, points: Sequence[StepPoint]) -> None:
        self._call("steps", points)

    def system(self, points: Sequence[SystemReading]) -> None:
        self._call("system", points)

    def epoch(self, record: EpochRecord) -> None:
        self._call("epoch", record)

    def finish(
        self, status: str, result: Mapping[str, Any] | None, verdict: ServedVerdict | None
    ) -> None:
        self._call("finish", status, result, verdict)

    def late_verdicts(self, verdicts: Sequence[tuple[str, ServedVerdict]]) -> None:
        """Verdicts of other runs that waited on this (dense) one, for the sinks that can
        write into another run's record (MLflow; TensorBoard's files are each run's own)."""
        if verdicts:
            self._call("late_verdicts", verdicts)

    def close(self) -> None:
        self._call("close")


def open_sinks(
    *,
    tensorboard: bool,
    mlflow_tracking_uri: str | None,
    remember_mlflow_run: Callable[[str], None],
    on_failure: Callable[[str, str], None],
) -> Sinks:
    """The sinks a deployment turned on (none by default), not yet started."""
    sinks: list[Sink] = []
    if tensorboard:
        sinks.append(TensorBoardSink())
    if mlflow_tracking_uri:
        sinks.append(MLflowSink(mlflow_tracking_uri, remember_mlflow_run))
    return Sinks(sinks, on_failure)
