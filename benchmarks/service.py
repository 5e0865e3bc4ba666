"""Part 5: the service, against real Postgres and Redis on this machine.

A throwaway database (migrated by Alembic, dropped at the end) and a Redis key prefix of
its own; the real app in a subprocess, driven over HTTP by httpx clients in this process;
a real Celery worker for the queue latency (benchmarks/deployment.py). The API runs as the
README deploys it, `python -m api.serve --workers 2` (API_WORKERS), for every figure. Each
figure is a module of its own:

- api_latency: GET /experiments/{id}/metrics latency p50/p99 at 1 and 32 concurrent
  clients, for an experiment with 100 epochs x 2 MoE layers of stored metrics; at 32
  clients in rounds interleaved with the no-op floor (/healthz), target p99 <= floor p99
  + 10%; POST /experiments requests/s (32 concurrent clients, a fresh Idempotency-Key on
  each request as the CLI sends), target >= 200 req/s;
- sse_fanout: the API's CPU time, as a fraction of one core, while 100 event streams
  (GET /experiments/{id}/events) follow one running run between epochs, its progress
  written by a heartbeat every MOE_PROGRESS_INTERVAL; beside the same window with no
  stream; target < 0.10 of a core, every stream connected and fed;
- queue_latency: POST to `running`, with an idle worker;
- epoch_streaming: streaming one epoch's rows (`leases.record_epoch`, as the worker's
  callback calls it) as a fraction of a tiny-preset training epoch.

Server CPU is read from /proc (utime + stime of every process in the API's session: the
uvicorn supervisor and its workers); the load generator's own CPU is reported beside it,
since on two cores a saturated Python generator caps what it can measure. Without the
servers (see benchmarks/deployment.py) the section reports "skipped: <reason>".
"""

from __future__ import annotations

import os
from typing import Any

from . import api_latency, epoch_streaming
from .context import Context
from .deployment import deployment, unavailable
from .queue_latency import queue_latency
from .sse_fanout import sse_fanout

FULL: dict[str, Any] = dict(epochs=100, layers=2, reads_1=300, reads_32=32 * 60, rounds=4, posts=1200,
            queue_runs=7, streams=100, sse_window=20.0, sse_warmup=5.0)  # fmt: skip
SMOKE: dict[str, Any] = dict(epochs=10, layers=2, reads_1=10, reads_32=32, rounds=1, posts=16, queue_runs=1,
             streams=6, sse_window=2.5, sse_warmup=0.5)  # fmt: skip
# The README's deployment (and docker-compose.yml's): one uvicorn process per core.
API_WORKERS = 2


def run(ctx: Context) -> dict[str, Any]:
    reason = unavailable()
    if reason:
        return {"skipped": reason}
    n = SMOKE if ctx.smoke else FULL
    with deployment(workers=API_WORKERS) as dep:
        experiment_id, writes = epoch_streaming.seed_metrics(dep, n["epochs"], n["layers"])
        path = f"/experiments/{experiment_id}/metrics"
        rows, targets = api_latency.rows(dep, path, n, ctx.smoke)
        sse = sse_fanout(dep, n["streams"], n["sse_window"], n["sse_warmup"])
        rows += sse
        targets.append(sse[-1]["target"])
        rows.append(queue_latency(dep, n["queue_runs"]))
        rows.append(epoch_streaming.row(ctx, writes, n["layers"]))
    # The issue 9 targets as this section states them (report.TARGETS checks its own), and
    # the load on the machine: other work on these two cores moves every figure here.
    load = list(os.getloadavg())
    return {"rows": rows, "targets": targets, "api_workers": API_WORKERS,
            "load_avg_at_end": load}  # fmt: skip
