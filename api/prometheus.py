"""`GET /metrics` in Prometheus' text format: what an operator watches and an autoscaler
scales on, read from the store at every scrape (every API replica answers the same)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from store.db import session_scope
from store.settings import Settings
from store.stats import EPOCH_SECONDS_BUCKETS, ServiceStats, service_stats


class StoreCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with session_scope(self.settings.database_url) as session:
            stats = service_stats(
                session=session, heartbeat_timeout=self.settings.heartbeat_timeout
            )
        yield from metric_families(stats)


def metric_families(stats: ServiceStats) -> Iterator[Metric]:
    runs = GaugeMetricFamily("moe_runs", "Experiments by status.", labels=["status"])
    for status, count in stats.runs_by_status.items():
        runs.add_metric([status], count)
    yield runs
    yield GaugeMetricFamily(
        "moe_queued_runs", "Experiments waiting for a worker.",
        value=stats.runs_by_status.get("queued", 0),
    )  # fmt: skip
    yield GaugeMetricFamily(
        "moe_oldest_queued_run_age_seconds",
        "How long the longest-waiting queued experiment has waited (0 when none).",
        value=stats.oldest_queued_seconds,
    )
    yield GaugeMetricFamily(
        "moe_workers_live", "Workers whose heartbeat is recent.", value=stats.live_workers
    )
    yield GaugeMetricFamily(
        "moe_workers_busy", "Live workers training an experiment.", value=stats.busy_workers
    )
    yield GaugeMetricFamily(
        "moe_workers_stopping", "Live workers in a warm shutdown.", value=stats.stopping_workers
    )
    yield CounterMetricFamily(
        "moe_epochs_finished", "Epochs recorded.", value=stats.epochs_finished
    )
    buckets = [
        (str(bound), count)
        for bound, count in zip(EPOCH_SECONDS_BUCKETS, stats.epoch_seconds_buckets, strict=True)
    ]
    buckets.append(("+Inf", stats.epoch_seconds_count))
    yield HistogramMetricFamily(
        "moe_epoch_duration_seconds",
        "Wall-clock seconds of an epoch, training and evaluation.",
        buckets=buckets,
        sum_value=stats.epoch_seconds_sum,
    )
    yield CounterMetricFamily(
        "moe_run_takeovers",
        "Runs taken over after their worker died (lease expired or process lost).",
        value=stats.takeovers,
    )
    yield CounterMetricFamily(
        "moe_run_handbacks",
        "Runs handed back to the queue by a worker told to stop (scale-in, redeploy).",
        value=stats.handbacks,
    )
    yield CounterMetricFamily(
        "moe_run_restarts",
        "Attempts after a run's first, for any reason (takeover, handback, retry).",
        value=stats.restarts,
    )
    sinks = CounterMetricFamily(
        "moe_sink_failures",
        "Failures of the optional sinks (TensorBoard, MLflow) during a run's attempt; the "
        "run goes on without the sink.",
        labels=["sink"],
    )
    for sink, count in stats.sink_failures.items():
        sinks.add_metric([sink], count)
    yield sinks
    yield from gpu_families(stats.gpus)


# Each worker's latest GPU reading: a series per worker that has one, none for a CPU worker
# (absent, not zero, so that an average over GPUs is not dragged down by CPUs).
GPU_GAUGES = (
    ("moe_worker_gpu_utilization_percent", "utilization", "GPU busy, percent (NVML)."),
    ("moe_worker_gpu_memory_used_bytes", "memory_used", "GPU memory in use, bytes."),
    ("moe_worker_gpu_memory_total_bytes", "memory_total", "GPU memory, bytes."),
    ("moe_worker_gpu_power_watts", "power_watts", "GPU power draw, watts."),
)


def gpu_families(gpus: dict[str, dict]) -> Iterator[Metric]:
    for name, key, help_text in GPU_GAUGES:
        family = GaugeMetricFamily(name, help_text, labels=["worker", "gpu"])
        for worker, reading in gpus.items():
            if reading.get(key) is not None:
                family.add_metric([worker, reading.get("name") or ""], reading[key])
        yield family


def exposition(settings: Settings) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(settings))
    return generate_latest(registry)
