"""The service section's queue figure: POST a micro experiment to an idle real Celery
worker, and time until the API reports it `running` (the first run, which pays the
worker's imports, is reported apart)."""

from __future__ import annotations

import time
from typing import Any

from .deployment import Deployment
from .harness import summarize


def queue_latency(dep: Deployment, runs: int) -> dict[str, Any]:
    """POST a micro experiment to an idle worker; time until the API reports it running."""
    import httpx

    dep.drop_queued()  # earlier POSTs' tasks would keep the worker busy
    worker = dep.worker("bench")
    latencies = []
    try:
        body = {"name": "bench-queue", "base_preset": "micro",
                "base": {"max_train_tokens": 4096, "max_val_tokens": 1024, "num_epochs": 50}}  # fmt: skip
        with httpx.Client(base_url=dep.base_url, timeout=30) as client:
            for _ in range(runs + 1):  # the first run pays the worker's imports: untimed
                t0 = time.perf_counter()
                exp = client.post("/experiments", json=body).json()
                while True:
                    status = client.get(f"/experiments/{exp['id']}").json()["status"]
                    if status != "queued":
                        break
                    if time.perf_counter() - t0 > 120:
                        raise RuntimeError("experiment not picked up in 120s")
                    time.sleep(0.002)
                latencies.append(time.perf_counter() - t0)
                client.post(f"/experiments/{exp['id']}/cancel")
                while client.get(f"/experiments/{exp['id']}").json()["status"] in (
                    "queued",
                    "running",
                ):
                    time.sleep(0.05)  # idle again before the next POST
    finally:
        worker.kill()
    return {
        "name": "queue latency (POST to running)",
        "params": {"runs": runs, "first_run_ms": 1e3 * latencies[0]},
        "latency_ms": summarize([1e3 * x for x in latencies[1:]]),
    }
