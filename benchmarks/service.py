"""Part 5: the service, against real Postgres and Redis on this machine.

A throwaway database (migrated by Alembic, dropped at the end) and a Redis key prefix of
its own; the real app under uvicorn in a subprocess, driven over HTTP by httpx clients in
this process; a real Celery worker for the queue latency. Figures:

- GET /experiments/{id}/metrics latency p50/p99 at 1 and 32 concurrent clients, for an
  experiment with 100 epochs x 2 MoE layers of stored metrics;
- POST /experiments requests/s (32 concurrent clients);
- queue latency, POST to `running`, with an idle worker;
- streaming one epoch's rows (`runs.record_epoch`, as the worker's callback calls it) as
  a fraction of a tiny-preset training epoch.

Servers: MOE_BENCH_POSTGRES_URL (default the tests' MOE_TEST_POSTGRES_URL, else
postgresql+psycopg://root@127.0.0.1:5432/test) and MOE_BENCH_REDIS_URL (likewise,
redis://127.0.0.1:6379/0). Without them the section reports "skipped: <reason>".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .context import Context
from .harness import ROOT, summarize

POSTGRES_URL = os.environ.get(
    "MOE_BENCH_POSTGRES_URL",
    os.environ.get("MOE_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"),
)
REDIS_URL = os.environ.get(
    "MOE_BENCH_REDIS_URL", os.environ.get("MOE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
)
FULL = dict(epochs=100, layers=2, reads_1=300, reads_32=32 * 30, posts=600, queue_runs=7)
SMOKE = dict(epochs=10, layers=2, reads_1=20, reads_32=64, posts=40, queue_runs=1)


def _unavailable() -> str | None:
    try:
        import httpx  # noqa: F401
        import redis
        from sqlalchemy import create_engine, text

        import api.main  # noqa: F401
    except Exception as exc:
        return f"service not importable: {type(exc).__name__}: {exc}"
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"Postgres ({POSTGRES_URL}) not reachable: {type(exc).__name__}"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis ({REDIS_URL}) not reachable: {type(exc).__name__}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_")}
    env.update(settings.as_env())
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # the worker trains beside the API on two cores
    return env


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def deployment(**overrides: Any) -> Iterator[dict[str, Any]]:
    """A migrated database, a Redis prefix, settings (`overrides` on top) and a running
    API; all torn down."""
    import redis
    from sqlalchemy import create_engine, make_url, text

    from store.migrate import upgrade_database
    from store.settings import Settings

    from .data_pipeline import SMOKE_LINES, _head, data_dir

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"moe_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    prefix = f"moe-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}:"
    r = redis.Redis.from_url(REDIS_URL)
    api = None
    with tempfile.TemporaryDirectory(prefix="moe-bench-svc-") as tmp:
        try:
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{name}"'))
            url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
            upgrade_database(url)
            source = data_dir()
            corpus = _head(source, Path(tmp) / "corpus", SMOKE_LINES) if source else None
            settings = Settings(
                home=Path(tmp) / "home", database_url=url, broker_url=REDIS_URL,
                broker_key_prefix=prefix, artifact_dir=Path(tmp) / "artifacts",
                data_dir=corpus, cache_dir=Path(tmp) / "cache", cancel_poll_seconds=0.05,
                **overrides,
            )  # fmt: skip
            port = _free_port()
            log = open(Path(tmp) / "api.log", "wb")
            api = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "warning", "--no-access-log"],
                cwd=ROOT, env=_env(settings), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            base_url = f"http://127.0.0.1:{port}"
            _wait_http(base_url + "/healthz", api, Path(tmp) / "api.log")
            yield dict(settings=settings, url=url, base_url=base_url, redis=r, prefix=prefix,
                       tmp=Path(tmp))  # fmt: skip
        finally:
            if api is not None:
                _stop(api)
            for key in r.scan_iter(match=f"{prefix}*"):
                r.delete(key)
            from store.db import _engines

            for u in [u for u in _engines if name in u]:
                _engines.pop(u).dispose()
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"API exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"API did not answer {url} in {timeout}s")


def _epoch_record(epoch: int, layers: int) -> dict[str, Any]:
    usage = [100 / 8] * 8
    return {
        "epoch": epoch, "model_name": "bench",
        "train": {"loss": 5.0, "ce_loss": 4.99, "aux_loss": 0.01},
        "val": {"loss": 5.1, "ce_loss": 5.09, "aux_loss": 0.01},
        "tokens_per_sec": 10_000.0, "steps": 76, "forward_time": 1.0, "backward_time": 2.0,
        "optimizer_time": 0.5, "gating_temperature": 1.0,
        "expert_stats": [
            {"layer": 2 * (i + 1), "entropy": 2.07, "max_entropy": 2.079, "min_usage": 12.5,
             "max_usage": 12.5, "usage": usage, "dropped": 0.01}
            for i in range(layers)
        ],
        "best_val_loss": 5.1, "patience_counter": 0, "stopped_early": False,
    }  # fmt: skip


def seed_metrics(dep: dict[str, Any], epochs: int, layers: int) -> tuple[int, list[float]]:
    """A running experiment with `epochs` epochs of rows, written the way the worker
    writes them (one session and transaction per epoch); returns its id and the seconds
    each write took."""
    from sqlalchemy import update

    from moe_core.config import base_config, get_experiment_configs
    from store import runs
    from store.db import session_scope
    from store.models import Experiment, Status

    base = base_config("tiny")
    with session_scope(dep["url"]) as session:
        exp = runs.create_experiment(session=session, name="bench-metrics",
                                     config=get_experiment_configs(base)["baseline"], base=base,
                                     preset="baseline", base_preset="tiny")  # fmt: skip
        session.execute(update(Experiment).where(Experiment.id == exp.id)
                        .values(status=Status.running, worker="bench"))  # fmt: skip
        session.commit()
        experiment_id = exp.id
    seconds = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        with session_scope(dep["url"]) as session:
            runs.record_epoch(session=session, experiment_id=experiment_id, owner="bench",
                              record=_epoch_record(epoch, layers))  # fmt: skip
        seconds.append(time.perf_counter() - t0)
    return experiment_id, seconds


async def _load(base_url: str, method: str, path: str, total: int, concurrency: int,
                body: dict | None = None) -> tuple[list[float], float]:  # fmt: skip
    """`total` requests from `concurrency` clients; per-request seconds and the wall time."""
    import httpx

    latencies: list[float] = []
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        await client.request(method, path, json=body)  # warm the connection and the route

        async def one_client():
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                response = await client.request(method, path, json=body)
                latencies.append(time.perf_counter() - t0)
                response.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, wall


def _latency_row(name: str, latencies: list[float], wall: float, **params) -> dict[str, Any]:
    ms = sorted(1e3 * x for x in latencies)
    return {
        "name": name,
        "params": params,
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "latency_ms": summarize(ms),
        "requests_per_s": len(ms) / wall,
    }


def _wrk_row(name: str, url: str, concurrency: int, seconds: int) -> dict[str, Any]:
    """Latency percentiles and throughput from wrk (one thread, `concurrency` connections)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    percentiles = {
        int(m.group(1)): float(m.group(2)) * unit[m.group(3)]
        for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)$", out, re.M)
    }
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"name": name, "params": {"concurrency": concurrency, "seconds": seconds, "load": "wrk"},
            "p50_ms": percentiles[50], "p99_ms": percentiles[99], "requests_per_s": rate}  # fmt: skip


def start_worker(dep: dict[str, Any], name: str, *, wait: bool = True):
    """A real `celery worker` process in its own session; returns it and its open log."""
    log_path = dep["tmp"] / f"{name}.log"
    log = open(log_path, "ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-Q", "gpu",
         "--concurrency", "1", "--prefetch-multiplier", "1", "--without-gossip",
         "--without-mingle", "--loglevel", "INFO", "--hostname", f"{name}@%h"],
        cwd=ROOT, env=_env(dep["settings"]), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while wait and " ready." not in log_path.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)
    return worker, log


def queue_latency(dep: dict[str, Any], runs: int) -> dict[str, Any]:
    """POST a micro experiment to an idle worker; time until the API reports it running."""
    import httpx

    for key in dep["redis"].scan_iter(match=f"{dep['prefix']}*"):  # drop earlier POSTs' tasks
        dep["redis"].delete(key)
    worker, log = start_worker(dep, "bench")
    latencies = []
    try:
        body = {"name": "bench-queue", "base_preset": "micro",
                "base": {"max_train_tokens": 4096, "max_val_tokens": 1024, "num_epochs": 50}}  # fmt: skip
        with httpx.Client(base_url=dep["base_url"], timeout=30) as client:
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
        _stop(worker, signal.SIGKILL)
        log.close()
    return {
        "name": "queue latency (POST to running)",
        "params": {"runs": runs, "first_run_ms": 1e3 * latencies[0]},
        "latency_ms": summarize([1e3 * x for x in latencies[1:]]),
    }


def tiny_epoch_seconds(ctx: Context) -> float:
    """A tiny-preset training epoch (its real number of steps) through the Trainer."""
    import torch

    from moe_core.config import base_config, get_experiment_configs
    from moe_core.experiments import build_model, build_optimizer
    from moe_core.trainer import Trainer

    base = base_config("micro" if ctx.smoke else "tiny")
    cfg = get_experiment_configs(base)["baseline"]
    steps = base.max_train_tokens // (base.seq_len + 1) // cfg.batch_size
    torch.manual_seed(0)
    model = build_model(cfg, base)
    data = torch.randint(0, base.vocab_size, (steps, cfg.batch_size, base.seq_len + 1))
    batches = [(b[:, :-1], b[:, 1:]) for b in data]
    trainer = Trainer(model, batches, batches[:1], build_optimizer(model, cfg, base), "cpu",
                      verbose=False)  # fmt: skip
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        trainer.train_epoch()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(ctx: Context) -> dict[str, Any]:
    reason = _unavailable()
    if reason:
        return {"skipped": reason}
    n = SMOKE if ctx.smoke else FULL
    rows = []
    with deployment() as dep:
        experiment_id, writes = seed_metrics(dep, n["epochs"], n["layers"])
        path = f"/experiments/{experiment_id}/metrics"
        for concurrency, total in ((1, n["reads_1"]), (32, n["reads_32"])):
            lat, wall = asyncio.run(_load(dep["base_url"], "GET", path, total, concurrency))
            rows.append(_latency_row(f"GET metrics c={concurrency}", lat, wall,
                                     concurrency=concurrency, epochs=n["epochs"],
                                     layers=n["layers"], load="httpx"))  # fmt: skip
        # The floor: a route that does nothing, under the same load generator and server.
        # Whatever it costs, no route can beat it on this machine.
        lat, wall = asyncio.run(_load(dep["base_url"], "GET", "/healthz", n["reads_32"], 32))
        rows.append(_latency_row("GET /healthz c=32 (floor)", lat, wall, concurrency=32,
                                 load="httpx"))  # fmt: skip
        # httpx in Python costs about as much CPU per request as the server on these two
        # cores, so it caps what it can measure; wrk (C) does not, where it is installed.
        if shutil.which("wrk") and not ctx.smoke:
            for name, route in (
                ("GET metrics c=32", path),
                ("GET /healthz c=32 (floor)", "/healthz"),
            ):
                rows.append(_wrk_row(f"{name} [wrk]", dep["base_url"] + route, 32, seconds=8))
        body = {"name": "bench-post", "base_preset": "micro"}
        lat, wall = asyncio.run(
            _load(dep["base_url"], "POST", "/experiments", n["posts"], 32, body)
        )
        rows.append(_latency_row("POST /experiments c=32", lat, wall, concurrency=32))
        rows.append(queue_latency(dep, n["queue_runs"]))
        epoch = tiny_epoch_seconds(ctx)
        write = summarize(writes)
        rows.append({
            "name": "epoch streaming (record_epoch)",
            "params": {"layers": n["layers"], "tiny_epoch_s": epoch},
            "seconds": write,
            "fraction_of_epoch": write["median"] / epoch,
        })  # fmt: skip
    return {"rows": rows}
