"""The service section's HTTP figures: GET /experiments/{id}/metrics latency at 1 and 32
concurrent clients, in rounds interleaved with a no-op floor (/healthz), and POST
/experiments requests/s at 32 clients (a fresh Idempotency-Key on each request, as the CLI
sends); each on the README's deployment (`python -m api.serve`) and on plain `uvicorn
--workers N` beside it, to show what api.serve's socket fix is worth.

The load generator is httpx in this process; the server's CPU (every process of its
session) and the generator's own are reported beside each figure, since on two cores a
saturated Python generator caps what it can measure. Where wrk is installed, the full run
measures the README's deployment with it too.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .cpu_time import machine_busy_seconds, session_cpu_seconds
from .deployment import Deployment
from .harness import summarize
from .report import target_entry

# The targets of issue 9 ("service speed kept"), checked here, on the rows that carry them.
P99_OVER_FLOOR = 1.10  # GET metrics p99 at 32 clients <= the no-op route's p99 + 10%
POST_PER_S = 200.0  # POST /experiments requests/s
PLAIN = " [plain uvicorn]"  # the same deployment without api.serve's socket fix: Nagle on

# uvicorn's supervisor (--workers N > 1) binds the listening socket itself, with proto 0,
# and asyncio sets TCP_NODELAY only on accepted sockets whose proto is IPPROTO_TCP: every
# worker then answers with Nagle's algorithm on, and a response written in two sends
# (headers, body) waits for the client's delayed ACK, ~40 ms on Linux (Kludex/uvicorn#3149,
# open). The README's deployment runs `python -m api.serve`, which rebinds the socket as
# TCP; plain `uvicorn --workers N` is measured beside it, to show what the fix is worth.


def rows(dep: Deployment, metrics_path: str, sizes: dict[str, Any],
         smoke: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    """The GET and POST rows and their two targets; `metrics_path` is a run's metrics
    route with stored epochs; `sizes`: epochs, layers, reads_1, reads_32, rounds, posts."""
    n, workers = sizes, dep.api.workers
    out: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    plain_api = dep.processes.api(dep.settings, workers=workers, entry="uvicorn")
    try:
        readme = dict(base_url=dep.base_url, server=dep.api.pid)
        plain = dict(base_url=plain_api.url, server=plain_api.pid)
        get = dict(epochs=n["epochs"], layers=n["layers"], load="httpx", rounds=n["rounds"],
                   api_workers=workers)  # fmt: skip
        got = interleaved({"readme": {**readme, "path": metrics_path},
                           "plain": {**plain, "path": metrics_path}},
                          n["reads_1"], 1, n["rounds"])  # fmt: skip
        out.append(latency_row("GET metrics c=1", got["readme"], concurrency=1, **get))
        out.append(latency_row("GET metrics c=1" + PLAIN, got["plain"], concurrency=1,
                               plain_uvicorn=True, **get))  # fmt: skip
        # The floor: a route that does nothing, under the same load generator and server,
        # in rounds interleaved with the metrics route's. No route beats it.
        got = interleaved({
            "metrics": {**readme, "path": metrics_path}, "floor": {**readme, "path": "/healthz"},
            "metrics+": {**plain, "path": metrics_path}, "floor+": {**plain, "path": "/healthz"},
        }, n["reads_32"], 32, n["rounds"])  # fmt: skip
        metrics = latency_row("GET metrics c=32", got["metrics"], concurrency=32, **get)
        floor = latency_row("GET /healthz c=32 (floor)", got["floor"], concurrency=32, **get)
        ratio = _p99_over_floor(metrics, floor, "GET metrics p99 / floor p99 (c=32)", **get)
        targets.append(target_entry("GET metrics p99 @32 clients / no-op floor p99",
                                    ratio["p99_over_floor"], P99_OVER_FLOOR))  # fmt: skip
        ratio["target"] = targets[-1]
        out += [metrics, floor, ratio]
        metrics = latency_row("GET metrics c=32" + PLAIN, got["metrics+"], concurrency=32,
                              plain_uvicorn=True, **get)  # fmt: skip
        floor = latency_row("GET /healthz c=32 (floor)" + PLAIN, got["floor+"],
                            concurrency=32, plain_uvicorn=True, **get)  # fmt: skip
        out += [metrics, floor, _p99_over_floor(metrics, floor, "GET metrics p99 / floor p99 "
                                                "(c=32)" + PLAIN, plain_uvicorn=True, **get)]  # fmt: skip
        # POST as the CLI sends it: a fresh Idempotency-Key on every request.
        body = {"name": "bench-post", "base_preset": "micro"}

        def key() -> dict[str, str]:
            return {"Idempotency-Key": str(uuid.uuid4())}

        post = dict(method="POST", path="/experiments", body=body, headers=key)
        got = interleaved({"readme": {**readme, **post}, "plain": {**plain, **post}},
                          n["posts"], 32, 2)  # fmt: skip
        params = dict(load="httpx", rounds=2, api_workers=workers, idempotency_key=True)
        posted = latency_row("POST /experiments c=32", got["readme"], concurrency=32, **params)
        out += [posted, latency_row("POST /experiments c=32" + PLAIN, got["plain"],
                                    concurrency=32, plain_uvicorn=True, **params)]  # fmt: skip
    finally:
        plain_api.stop()  # idle from here on: the other figures see one API
    # httpx in Python costs about as much CPU per request as the server on these two
    # cores, so it caps what it can measure; wrk (C) does not, where it is installed.
    if shutil.which("wrk") and not smoke:
        for name, route in (("GET metrics c=32", metrics_path),
                            ("GET /healthz c=32 (floor)", "/healthz")):  # fmt: skip
            out.append(wrk_row(f"{name} [wrk]", dep.base_url + route, 32, seconds=8))
        script = _wrk_post_script(dep.tmp, body)
        posted = wrk_row("POST /experiments c=32 [wrk]", dep.base_url + "/experiments", 32,
                         seconds=8, script=script)  # fmt: skip
        posted["params"].update(api_workers=workers, idempotency_key=True)
        out.append(posted)
    targets.append(target_entry(f"POST /experiments (req/s), uvicorn --workers {workers}"
                                f" [{posted['params']['load']}]", posted["requests_per_s"],
                                POST_PER_S, higher_is_better=True))  # fmt: skip
    posted["target"] = targets[-1]
    return out, targets


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


def interleaved(loads: dict[str, dict[str, Any]], total: int, concurrency: int,
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


def latency_row(name: str, measured: dict[str, Any], **params) -> dict[str, Any]:
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


def _p99_over_floor(metrics: dict[str, Any], floor: dict[str, Any], name: str,
                    **params) -> dict[str, Any]:  # fmt: skip
    ratio = metrics["p99_ms"] / floor["p99_ms"]
    return {"name": name, "params": {"concurrency": 32, **params},
            "metrics_p99_ms": metrics["p99_ms"], "floor_p99_ms": floor["p99_ms"],
            "p99_over_floor": ratio}  # fmt: skip


def wrk_row(name: str, url: str, concurrency: int, seconds: int,
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
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert found is not None, f"wrk printed no rate:\n{out}"
    rate = float(found.group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if bad:
        raise RuntimeError(f"wrk {name}: {bad.group(1)} responses not 2xx/3xx")
    return {"name": name, "params": {"concurrency": concurrency, "seconds": seconds, "load": "wrk"},
            "p50_ms": percentiles[50], "p99_ms": percentiles[99], "requests_per_s": rate}  # fmt: skip


def _wrk_post_script(directory: Path, body: dict[str, Any]) -> Path:
    """A wrk Lua script: POST `body` as JSON with an Idempotency-Key of its own each time."""
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
