"""Part 5: the service, against real Postgres and Redis on this machine.

A throwaway database (migrated by Alembic, dropped at the end) and a Redis key prefix of
its own; the real app under uvicorn in a subprocess, driven over HTTP by httpx clients in
this process; a real Celery worker for the queue latency. Figures:

The API runs as the README deploys it, `uvicorn --workers 2` (API_WORKERS), for every
figure.

- GET /experiments/{id}/metrics latency p50/p99 at 1 and 32 concurrent clients, for an
  experiment with 100 epochs x 2 MoE layers of stored metrics; at 32 clients in rounds
  interleaved with the no-op floor (/healthz), target p99 <= floor p99 + 10%;
- POST /experiments requests/s (32 concurrent clients, a fresh Idempotency-Key on each
  request as the CLI sends), target >= 200 req/s;
- the SSE fan-out: the API's CPU time, as a fraction of one core, while 100 event streams
  (GET /experiments/{id}/events) follow one running run between epochs, its progress
  written by a heartbeat every MOE_PROGRESS_INTERVAL; beside the same window with no
  stream; target < 0.10 of a core, every stream connected and fed;
- queue latency, POST to `running`, with an idle worker;
- streaming one epoch's rows (`leases.record_epoch`, as the worker's callback calls it) as
  a fraction of a tiny-preset training epoch.

Server CPU is read from /proc (utime + stime of every process in the API's session: the
uvicorn supervisor and its workers); the load generator's own CPU is reported beside it,
since on two cores a saturated Python generator caps what it can measure.

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
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
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
FULL = dict(epochs=100, layers=2, reads_1=300, reads_32=32 * 60, rounds=4, posts=1200,
            queue_runs=7, streams=100, sse_window=20.0, sse_warmup=5.0)  # fmt: skip
SMOKE = dict(epochs=10, layers=2, reads_1=10, reads_32=32, rounds=1, posts=16, queue_runs=1,
             streams=6, sse_window=2.5, sse_warmup=0.5)  # fmt: skip
# The README's deployment (and docker-compose.yml's): one uvicorn process per core.
API_WORKERS = 2
# The targets of issue 9 ("service speed kept"), checked here, on the rows that carry them.
P99_OVER_FLOOR = 1.10  # GET metrics p99 at 32 clients <= the no-op route's p99 + 10%
POST_PER_S = 200.0  # POST /experiments requests/s
SSE_CORE_FRACTION = 0.10  # API CPU with 100 streams on one running run, of one core


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
def deployment(*, workers: int = 1, **overrides: Any) -> Iterator[dict[str, Any]]:
    """A migrated database, a Redis prefix, settings (`overrides` on top) and a running
    API (`uvicorn --workers N` for workers > 1); all torn down."""
    import redis
    from sqlalchemy import create_engine, make_url, text

    from store.migrate import upgrade_database
    from store.settings import Settings

    from .data_pipeline import SMOKE_LINES, _head, data_dir

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"moe_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    prefix = f"moe-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}:"
    r = redis.Redis.from_url(REDIS_URL)
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
            with api_server(settings, Path(tmp) / "api.log", workers=workers) as (api, base_url):
                yield dict(settings=settings, url=url, base_url=base_url, redis=r,
                           prefix=prefix, tmp=Path(tmp), api=api, workers=workers)  # fmt: skip
        finally:
            for key in r.scan_iter(match=f"{prefix}*"):
                r.delete(key)
            from store.db import _engines

            for u in [u for u in _engines if name in u]:
                _engines.pop(u).dispose()
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


# uvicorn's supervisor (--workers N > 1) binds the listening socket itself, with proto 0,
# and asyncio sets TCP_NODELAY only on accepted sockets whose proto is IPPROTO_TCP: every
# worker then answers with Nagle's algorithm on, and a response written in two sends
# (headers, body) waits for the client's delayed ACK, ~40 ms on Linux (Kludex/uvicorn#3149,
# open). The README's deployment runs `python -m api.serve`, which rebinds the socket as
# TCP; plain `uvicorn --workers N` is measured beside it, to show what the fix is worth.


@contextlib.contextmanager
def api_server(settings, log_path: Path, *, workers: int = 1,
               plain_uvicorn: bool = False) -> Iterator[tuple[subprocess.Popen, str]]:  # fmt: skip
    """`python -m api.serve api.main:app` as the README deploys it (`--workers N` for N > 1;
    `plain_uvicorn`: `uvicorn` itself, without the socket fix) in a session of its own; the
    process and its base URL."""
    port = _free_port()
    launcher = ["-m", "uvicorn"] if plain_uvicorn else ["-m", "api.serve"]
    with open(log_path, "wb") as log:
        api = subprocess.Popen(
            [sys.executable, *launcher, "api.main:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "info", "--no-access-log",
             *(["--workers", str(workers)] if workers > 1 else [])],
            cwd=ROOT, env=_env(settings), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_http(base_url + "/healthz", api, log_path)
            if workers > 1:  # every worker up, not just the first to answer
                _wait_workers(api, log_path, workers)
            yield api, base_url
        finally:
            _stop(api)


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


def _wait_workers(process: subprocess.Popen, log: Path, workers: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count("Application startup complete") < workers:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{workers} API workers did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


_TICK = os.sysconf("SC_CLK_TCK")


def session_cpu_seconds(session_id: int) -> float:
    """utime + stime of every live process in session `session_id` (the API was started
    in a session of its own: the uvicorn supervisor and its worker processes)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        # fields[0] is field 3 of proc(5): session is field 6, utime 14, stime 15
        if int(fields[3]) == session_id:
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (/proc/stat): over a window,
    what this machine did in all, whoever did it."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user .. steal (guest is in user)
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK  # less idle and iowait


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
    from store import catalogue, leases
    from store.db import session_scope
    from store.models import Experiment, Status

    base = base_config("tiny")
    with session_scope(dep["url"]) as session:
        exp = catalogue.create_experiment(session=session, name="bench-metrics",
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
            leases.record_epoch(session=session, experiment_id=experiment_id, owner="bench",
                              record=_epoch_record(epoch, layers))  # fmt: skip
        seconds.append(time.perf_counter() - t0)
    return experiment_id, seconds


async def _load(base_url: str, method: str, path: str, total: int, concurrency: int,
                body: dict | None = None, *, headers: Callable[[], dict[str, str]] | None = None,
                server: int | None = None) -> dict[str, Any]:  # fmt: skip
    """`total` requests from `concurrency` clients (`headers()` made for each request).

    Returns the per-request seconds, the wall time, and the CPU seconds over that wall
    time of the server (the processes of session `server`) and of this load generator."""
    import httpx

    latencies: list[float] = []
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def request(client):
        return client.request(method, path, json=body, headers=headers() if headers else None)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        (await request(client)).raise_for_status()  # warm the connection and the route

        async def one_client():
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                response = await request(client)
                latencies.append(time.perf_counter() - t0)
                response.raise_for_status()

        cpu0 = session_cpu_seconds(server) if server else 0.0
        client0, busy0 = time.process_time(), machine_busy_seconds()
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        client_cpu = time.process_time() - client0
        busy = machine_busy_seconds() - busy0
        server_cpu = session_cpu_seconds(server) - cpu0 if server else None
    return {"latencies": latencies, "wall": wall, "server_cpu_s": server_cpu,
            "client_cpu_s": client_cpu, "machine_busy_s": busy}  # fmt: skip


def _interleaved(loads: dict[str, dict[str, Any]], total: int, concurrency: int,
                 rounds: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each of `loads` (name -> _load's arguments: base_url, method, path, and body, headers,
    server) `total` times from `concurrency` clients, in `rounds` rounds that each run every
    load once, in an order rotated from round to round (harness.interleave's scheme): a
    burst of load from a neighbour lands on all of them alike."""
    names = list(loads)
    keys = ("wall", "server_cpu_s", "client_cpu_s", "machine_busy_s")
    out = {n: {"latencies": [], **dict.fromkeys(keys, 0.0)} for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            a = loads[name]
            got = asyncio.run(_load(a["base_url"], a.get("method", "GET"), a["path"],
                                    total // rounds, concurrency, a.get("body"),
                                    headers=a.get("headers"), server=a.get("server")))  # fmt: skip
            out[name]["latencies"] += got["latencies"]
            for key in keys:
                out[name][key] += got[key]
    return out


def _latency_row(name: str, measured: dict[str, Any], **params) -> dict[str, Any]:
    ms = sorted(1e3 * x for x in measured["latencies"])
    row = {
        "name": name,
        "params": params,
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "latency_ms": summarize(ms),
        "requests_per_s": len(ms) / measured["wall"],
    }
    if measured.get("server_cpu_s") is not None:
        # CPU per request, and each side's share of the cores while the load ran: a load
        # generator near 1.0 (one core, asyncio) is the bottleneck, not the server.
        # The rest of machine_busy_cores (of 2) is Postgres, Redis and anyone else's work.
        row["server_cpu_ms_per_request"] = 1e3 * measured["server_cpu_s"] / len(ms)
        row["server_cores"] = measured["server_cpu_s"] / measured["wall"]
        row["generator_cores"] = measured["client_cpu_s"] / measured["wall"]
        row["machine_busy_cores"] = measured["machine_busy_s"] / measured["wall"]
    return row


def _target(name: str, value: float, bound: float, *, higher_is_better: bool = False,
            bound_text: str | None = None, met: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """A target entry shaped as report.check_targets' (target, bound, value, met, status, by)."""
    op = ">=" if higher_is_better else "<="
    if met is None:
        met = value >= bound if higher_is_better else value <= bound
    entry = {"target": name, "bound": bound_text or f"{op} {bound:g}", "value": value,
             "met": met, "status": "met" if met else "missed"}  # fmt: skip
    if not met and (value < bound if higher_is_better else value > bound):
        entry["by"] = 1 - value / bound if higher_is_better else value / bound - 1
    return entry


def _wrk_row(name: str, url: str, concurrency: int, seconds: int,
             script: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Latency percentiles and throughput from wrk (one thread, `concurrency` connections;
    `script`: a Lua script that makes the requests)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency",
         *(["-s", str(script)] if script else []), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    percentiles = {
        int(m.group(1)): float(m.group(2)) * unit[m.group(3)]
        for m in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)$", out, re.M)
    }
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if bad:
        raise RuntimeError(f"wrk {name}: {bad.group(1)} responses not 2xx/3xx")
    return {"name": name, "params": {"concurrency": concurrency, "seconds": seconds, "load": "wrk"},
            "p50_ms": percentiles[50], "p99_ms": percentiles[99], "requests_per_s": rate}  # fmt: skip


def _wrk_post_script(directory: Path, body: dict[str, Any]) -> Path:
    """A wrk Lua script: POST `body` as JSON with an Idempotency-Key of its own each time."""
    import json

    path = directory / "post.lua"
    path.write_text(f"""
wrk.method = "POST"
wrk.body = {json.dumps(json.dumps(body))}
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  wrk.headers["Idempotency-Key"] = "{uuid.uuid4().hex}-" .. n
  return wrk.format()
end
""")
    return path


def running_run(dep: dict[str, Any], owner: str) -> int:
    """A queued micro experiment, claimed by `owner` as a worker claims it: `running`."""
    from datetime import timedelta

    from moe_core.config import base_config, get_experiment_configs
    from store import catalogue, leases
    from store.db import session_scope
    from store.models import utcnow

    base = base_config("micro")
    with session_scope(dep["url"]) as session:
        exp = catalogue.create_experiment(session=session, name="bench-events",
                                     config=get_experiment_configs(base)["baseline"], base=base,
                                     preset="baseline", base_preset="micro")  # fmt: skip
        session.commit()
        experiment_id = exp.id
    with session_scope(dep["url"]) as session:
        claim = leases.claim_run(
            session=session, experiment_id=experiment_id, owner=owner, worker_name="bench",
            device="cpu", max_restarts=5,
            stale_before=utcnow() - timedelta(seconds=dep["settings"].heartbeat_timeout),
        )  # fmt: skip
    if claim.outcome != leases.ClaimOutcome.claimed:
        raise RuntimeError(f"could not claim experiment {experiment_id}: {claim}")
    return experiment_id


class ProgressWriter(threading.Thread):
    """The heartbeat a training worker writes between epochs: progress (the Progress
    fields) every `interval` seconds; `beats` holds the time.monotonic() of each write."""

    def __init__(self, dep: dict[str, Any], experiment_id: int, owner: str, interval: float):
        super().__init__(daemon=True, name="bench-progress")
        self.dep, self.experiment_id, self.owner = dep, experiment_id, owner
        self.interval = interval
        self.beats: list[float] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()  # not _stop: Thread has one

    def run(self) -> None:
        from store import leases
        from store.db import session_scope
        from store.models import utcnow

        steps = 76
        try:
            while not self._halt.is_set():
                step = len(self.beats) % steps + 1
                progress = {
                    "phase": "training", "epoch": 1, "step": step, "steps_per_epoch": steps,
                    "tokens_per_sec": 10_000.0 + step, "eta_seconds": 2.0 * (steps - step),
                    "updated_at": utcnow().isoformat(),
                }  # fmt: skip
                with session_scope(self.dep["url"]) as session:
                    if not leases.heartbeat(session=session, experiment_id=self.experiment_id,
                                          owner=self.owner, progress=progress):  # fmt: skip
                        raise RuntimeError("the run is no longer the benchmark's")
                self.beats.append(time.monotonic())
                self._halt.wait(self.interval)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)
        if self.error is not None:
            raise RuntimeError(f"progress writer failed: {self.error!r}") from self.error


async def _follow_events(dep: dict[str, Any], experiment_id: int, streams: int, window: float,
                         warmup: float, writer: ProgressWriter) -> dict[str, Any]:  # fmt: skip
    """`streams` event streams on the run; after `warmup` (and until each has had a progress
    event), the API's CPU over `window` seconds and what each stream received."""
    import httpx

    path = f"/experiments/{experiment_id}/events"
    counts = [Counter() for _ in range(streams)]
    connected = [False] * streams
    errors: list[str] = []
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    timeout = httpx.Timeout(30.0, read=60.0)  # the stream pings every 15 s

    async def follow(i: int, client: httpx.AsyncClient) -> None:
        try:
            async with client.stream("GET", path, headers={"Accept": "text/event-stream"}) as r:
                r.raise_for_status()
                connected[i] = True
                async for line in r.aiter_lines():
                    if line.startswith("event:"):
                        counts[i][line.removeprefix("event:").strip()] += 1
        except Exception as exc:  # counted: the stream is not connected at the end
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connected[i] = False

    async with httpx.AsyncClient(base_url=dep["base_url"], limits=limits, timeout=timeout) as c:
        tasks = [asyncio.create_task(follow(i, c)) for i in range(streams)]
        await asyncio.sleep(warmup)
        deadline = time.monotonic() + 60
        while not all(n["progress"] for n in counts) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        before = [Counter(n) for n in counts]
        beats0 = len(writer.beats)
        cpu0, t0 = session_cpu_seconds(dep["api"].pid), time.monotonic()
        await asyncio.sleep(window)
        cpu1, t1 = session_cpu_seconds(dep["api"].pid), time.monotonic()
        beats = len(writer.beats) - beats0
        still = sum(connected)
        got = [n - b for n, b in zip(counts, before, strict=True)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0, "connected": still, "got": got,
            "total": counts, "beats": beats, "errors": errors}  # fmt: skip


def sse_fanout(dep: dict[str, Any], streams: int, window: float, warmup: float) -> list[dict]:
    """The API's CPU, as a fraction of one core, while `streams` event streams follow one
    running run between epochs (progress only), beside the same window with none."""
    settings = dep["settings"]
    owner = f"bench-events-{os.getpid()}"
    experiment_id = running_run(dep, owner)
    writer = ProgressWriter(dep, experiment_id, owner, settings.progress_interval)
    writer.start()
    try:
        time.sleep(min(warmup, 2.0))  # the first write in, the API settled
        cpu0, t0 = session_cpu_seconds(dep["api"].pid), time.monotonic()
        time.sleep(window)
        idle = {"cpu_s": session_cpu_seconds(dep["api"].pid) - cpu0,
                "wall_s": time.monotonic() - t0}  # fmt: skip
        busy = asyncio.run(_follow_events(dep, experiment_id, streams, window, warmup, writer))
    finally:
        writer.stop()
    params = {"run": "running, between epochs", "window_s": window, "warmup_s": warmup,
              "api_workers": dep["workers"], "progress_interval_s": settings.progress_interval,
              "event_poll_seconds": settings.event_poll_seconds}  # fmt: skip
    rows = [{
        "name": "SSE idle baseline (0 streams)",
        "params": {**params, "streams": 0},
        "cpu_fraction_of_core": idle["cpu_s"] / idle["wall_s"],
        "cpu_s": idle["cpu_s"], "wall_s": idle["wall_s"],
    }]  # fmt: skip
    progress = [n["progress"] for n in busy["got"]]
    events = [sum(n.values()) for n in busy["got"]]
    # Every stream must have had (about) every progress write of the window: one may fall
    # just outside it at either end.
    fed = min(progress) >= max(1, busy["beats"] - 1)
    fraction = busy["cpu_s"] / busy["wall_s"]
    ok = busy["connected"] == streams and fed
    rows.append({
        "name": f"SSE fan-out ({streams} streams, one run)",
        "params": {**params, "streams": streams},
        "cpu_fraction_of_core": fraction,
        "cpu_s": busy["cpu_s"], "wall_s": busy["wall_s"],
        "over_idle_fraction_of_core": fraction - rows[0]["cpu_fraction_of_core"],
        "streams_connected_at_end": busy["connected"],
        "progress_writes_in_window": busy["beats"],
        "progress_events_per_stream": summarize([float(x) for x in progress]),
        "events_per_stream": summarize([float(x) for x in events]),
        "events_per_stream_since_connect": summarize(
            [float(sum(n.values())) for n in busy["total"]]),
        "every_stream_fed": fed,
        "stream_errors": busy["errors"][:5],
        "target": _target(f"API CPU with {streams} event streams on one run (cores)", fraction,
                          SSE_CORE_FRACTION, bound_text=f"< {SSE_CORE_FRACTION:g}, every stream "
                          "connected and fed", met=fraction < SSE_CORE_FRACTION and ok),
    })  # fmt: skip
    return rows


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
    from moe_core.runner import build_model, build_optimizer
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


def _p99_over_floor(metrics: dict[str, Any], floor: dict[str, Any], name: str,
                    **params) -> dict[str, Any]:  # fmt: skip
    ratio = metrics["p99_ms"] / floor["p99_ms"]
    return {"name": name, "params": {"concurrency": 32, **params},
            "metrics_p99_ms": metrics["p99_ms"], "floor_p99_ms": floor["p99_ms"],
            "p99_over_floor": ratio}  # fmt: skip


def run(ctx: Context) -> dict[str, Any]:
    reason = _unavailable()
    if reason:
        return {"skipped": reason}
    n = SMOKE if ctx.smoke else FULL
    rows = []
    targets = []
    fix = " [plain uvicorn]"  # the same deployment without api.serve's socket fix: Nagle on
    with deployment(workers=API_WORKERS) as dep:
        experiment_id, writes = seed_metrics(dep, n["epochs"], n["layers"])
        path = f"/experiments/{experiment_id}/metrics"
        with api_server(dep["settings"], dep["tmp"] / "api-plain.log", workers=API_WORKERS,
                        plain_uvicorn=True) as (plain_api, plain_url):  # fmt: skip
            readme = dict(base_url=dep["base_url"], server=dep["api"].pid)
            plain = dict(base_url=plain_url, server=plain_api.pid)
            get = dict(epochs=n["epochs"], layers=n["layers"], load="httpx", rounds=n["rounds"],
                       api_workers=API_WORKERS)  # fmt: skip
            got = _interleaved({"readme": {**readme, "path": path}, "plain": {**plain, "path": path}},
                               n["reads_1"], 1, n["rounds"])  # fmt: skip
            rows.append(_latency_row("GET metrics c=1", got["readme"], concurrency=1, **get))
            rows.append(_latency_row("GET metrics c=1" + fix, got["plain"], concurrency=1,
                                     plain_uvicorn=True, **get))  # fmt: skip
            # The floor: a route that does nothing, under the same load generator and
            # server, in rounds interleaved with the metrics route's. No route beats it.
            got = _interleaved({
                "metrics": {**readme, "path": path}, "floor": {**readme, "path": "/healthz"},
                "metrics+": {**plain, "path": path}, "floor+": {**plain, "path": "/healthz"},
            }, n["reads_32"], 32, n["rounds"])  # fmt: skip
            metrics = _latency_row("GET metrics c=32", got["metrics"], concurrency=32, **get)
            floor = _latency_row("GET /healthz c=32 (floor)", got["floor"], concurrency=32, **get)
            ratio = _p99_over_floor(metrics, floor, "GET metrics p99 / floor p99 (c=32)", **get)
            targets.append(_target("GET metrics p99 @32 clients / no-op floor p99",
                                   ratio["p99_over_floor"], P99_OVER_FLOOR))  # fmt: skip
            ratio["target"] = targets[-1]
            rows += [metrics, floor, ratio]
            metrics = _latency_row("GET metrics c=32" + fix, got["metrics+"], concurrency=32,
                                   plain_uvicorn=True, **get)  # fmt: skip
            floor = _latency_row("GET /healthz c=32 (floor)" + fix, got["floor+"],
                                 concurrency=32, plain_uvicorn=True, **get)  # fmt: skip
            rows += [
                metrics,
                floor,
                _p99_over_floor(
                    metrics,
                    floor,
                    "GET metrics p99 / floor p99 (c=32)" + fix,
                    plain_uvicorn=True,
                    **get,
                ),
            ]
            # POST as the CLI sends it: a fresh Idempotency-Key on every request.
            body = {"name": "bench-post", "base_preset": "micro"}

            def key() -> dict[str, str]:
                return {"Idempotency-Key": str(uuid.uuid4())}

            post = dict(method="POST", path="/experiments", body=body, headers=key)
            got = _interleaved({"readme": {**readme, **post}, "plain": {**plain, **post}},
                               n["posts"], 32, 2)  # fmt: skip
            params = dict(load="httpx", rounds=2, api_workers=API_WORKERS, idempotency_key=True)
            posted = _latency_row("POST /experiments c=32", got["readme"], concurrency=32,
                                  **params)  # fmt: skip
            rows += [
                posted,
                _latency_row(
                    "POST /experiments c=32" + fix,
                    got["plain"],
                    concurrency=32,
                    plain_uvicorn=True,
                    **params,
                ),
            ]
        # httpx in Python costs about as much CPU per request as the server on these two
        # cores, so it caps what it can measure; wrk (C) does not, where it is installed.
        if shutil.which("wrk") and not ctx.smoke:
            for name, route in (
                ("GET metrics c=32", path),
                ("GET /healthz c=32 (floor)", "/healthz"),
            ):
                rows.append(_wrk_row(f"{name} [wrk]", dep["base_url"] + route, 32, seconds=8))
            script = _wrk_post_script(dep["tmp"], body)
            posted = _wrk_row("POST /experiments c=32 [wrk]", dep["base_url"] + "/experiments",
                              32, seconds=8, script=script)  # fmt: skip
            posted["params"].update(api_workers=API_WORKERS, idempotency_key=True)
            rows.append(posted)
        targets.append(_target(f"POST /experiments (req/s), uvicorn --workers {API_WORKERS}"
                               f" [{posted['params']['load']}]", posted["requests_per_s"],
                               POST_PER_S, higher_is_better=True))  # fmt: skip
        posted["target"] = targets[-1]
        sse = sse_fanout(dep, n["streams"], n["sse_window"], n["sse_warmup"])
        rows += sse
        targets.append(sse[-1]["target"])
        rows.append(queue_latency(dep, n["queue_runs"]))
        write = summarize(writes)
        try:
            epoch = tiny_epoch_seconds(ctx)
        except Exception as exc:  # the engine mid-edit must not cost the service's figures
            # (named so that report.TARGETS' "epoch streaming" finds no row: not measured)
            rows.append({"name": "tiny epoch, for epoch streaming", "seconds": write,
                         "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
        else:
            rows.append({
                "name": "epoch streaming (record_epoch)",
                "params": {"layers": n["layers"], "tiny_epoch_s": epoch},
                "seconds": write,
                "fraction_of_epoch": write["median"] / epoch,
            })  # fmt: skip
    # The issue 9 targets as this section states them (report.TARGETS checks its own), and
    # the load on the machine: other work on these two cores moves every figure here.
    load = list(os.getloadavg())
    return {"rows": rows, "targets": targets, "api_workers": API_WORKERS,
            "load_avg_at_end": load}  # fmt: skip
