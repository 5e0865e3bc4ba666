"""Part 6: how long a run waits when its worker goes away, with the real components
(Postgres, Redis, the API under uvicorn, Celery workers training micro runs).

- SIGKILL of a whole worker (main and pool process, as when a node dies) until another
  live worker has taken the run over, at the default MOE_HEARTBEAT_TIMEOUT (60 s) and at
  10 s: the lease expires, a sweep (every MOE_SWEEP_INTERVAL, 5 s) re-queues the run, an
  idle worker claims it. Expect heartbeat_timeout plus up to a sweep interval.
- SIGTERM to a worker's main process (scale-in) until the run is handed back, until the
  worker has exited, and until another worker has resumed it.

Each figure is the median of several kills, each on a fresh worker beside an idle one.
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

from local_deployment.servers import wait_until

from .context import Context
from .deployment import Deployment, deployment, unavailable
from .harness import summarize

FULL: dict[str, Any] = dict(kill_default=3, kill_short=5, term=5)
SMOKE: dict[str, Any] = dict(kill_default=0, kill_short=1, term=1)

if TYPE_CHECKING:
    from local_deployment.processes import WorkerProcess


def _trials(dep: Deployment, count: int, signum: int) -> dict[str, list[float]]:
    """`count` times: two workers, a long run on one of them, `signum` to its owner."""
    import httpx

    figures: dict[str, list[float]] = {"resume": [], "handback": [], "exit": []}
    workers: dict[str, WorkerProcess] = {}  # left, right -> a live worker
    body = {"name": "bench-recovery", "base_preset": "micro",
            "base": {"max_train_tokens": 8192, "max_val_tokens": 1024, "num_epochs": 500}}  # fmt: skip
    with httpx.Client(base_url=dep.base_url, timeout=30) as api:
        for trial in range(count):
            for side in ("left", "right"):
                if side not in workers:
                    workers[side] = dep.worker(f"{side}{trial}")
            run = api.post("/experiments", json=body).json()
            path = f"/experiments/{run['id']}"
            owner = wait_until(lambda p=path: (r := api.get(p).json())["current_epoch"] >= 1
                               and r["worker_name"], timeout=120, what="the first epoch")  # fmt: skip
            side = next(s for s, w in workers.items() if w.name == owner.partition("@")[0])
            victim = workers.pop(side)
            t0 = time.monotonic()
            if signum == signal.SIGKILL:
                victim.kill()  # the whole worker, as when its node dies
                wait_until(lambda p=path: api.get(p).json()["attempts"] == 2, timeout=300,
                           what="the resume")  # fmt: skip
                figures["resume"].append(time.monotonic() - t0)
            else:
                victim.terminate()  # its main process, as at scale-in
                # each moment as it happens, in one loop: they may come in any order
                seen: dict[str, float] = {}
                while len(seen) < 3 and time.monotonic() - t0 < 120:
                    run = api.get(path).json()
                    now = time.monotonic() - t0
                    if run["handbacks"] == 1:
                        seen.setdefault("handback", now)
                    if run["attempts"] == 2:
                        seen.setdefault("resume", now)
                    if victim.process.poll() is not None:
                        seen.setdefault("exit", now)
                    time.sleep(0.01)
                if len(seen) < 3:
                    raise RuntimeError(f"after SIGTERM only {sorted(seen)} within 120 s")
                for what, seconds in seen.items():
                    figures[what].append(seconds)
            victim.kill()
            api.post(f"{path}/cancel")
            wait_until(lambda p=path: api.get(p).json()["status"] == "cancelled", timeout=60,
                       what="the cancel")  # fmt: skip
    return {k: v for k, v in figures.items() if v}


def run(ctx: Context) -> dict[str, Any]:
    reason = unavailable()
    if reason:
        return {"skipped": reason}
    n = SMOKE if ctx.smoke else FULL
    rows = []
    cases: list[tuple[str, signal.Signals, int, dict[str, Any]]] = [
        ("SIGKILL to resume", signal.SIGKILL, n["kill_default"], {}),
        ("SIGKILL to resume", signal.SIGKILL, n["kill_short"],
         {"heartbeat_timeout": 10.0}),
        ("SIGTERM", signal.SIGTERM, n["term"], {}),
    ]  # fmt: skip
    for name, signum, count, overrides in cases:
        if not count:
            continue
        with deployment(**overrides) as dep:
            settings = dep.settings
            figures = _trials(dep, count, signum)
        params = {
            "heartbeat_timeout": settings.heartbeat_timeout,
            "sweep_interval": settings.sweep_interval,
        }
        if signum == signal.SIGKILL:
            label = f"{name} (heartbeat {settings.heartbeat_timeout:.0f} s)"
            rows.append({"name": label, "params": params,
                         "seconds": summarize(figures["resume"]),
                         "over_heartbeat_s": summarize(
                             [x - settings.heartbeat_timeout for x in figures["resume"]])})  # fmt: skip
        else:
            for what in ("handback", "exit", "resume"):
                rows.append({"name": f"SIGTERM to {what}", "params": params,
                             "seconds": summarize(figures[what])})  # fmt: skip
    return {"rows": rows}
