"""The service section's event-stream figure: the API's CPU time, as a fraction of one core,
while many event streams (GET /experiments/{id}/events) follow one running run between
epochs, its progress written by a heartbeat every MOE_PROGRESS_INTERVAL as a worker writes
it; beside the same window with no stream. Every stream must stay connected and be fed."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from typing import Any

from .cpu_time import session_cpu_seconds
from .deployment import Deployment
from .harness import summarize
from .report import target_entry

SSE_CORE_FRACTION = 0.10  # issue 9: API CPU with 100 streams on one running run, of one core


def running_run(dep: Deployment, owner: str) -> int:
    """A queued micro experiment, claimed by `owner` as a worker claims it: `running`."""
    from datetime import timedelta

    from moe_core.config import base_config, get_experiment_configs
    from store import catalogue, leases
    from store.db import session_scope
    from store.models import utcnow

    base = base_config("micro")
    with session_scope(dep.url) as session:
        exp = catalogue.create_experiment(session=session, name="bench-events",
                                     config=get_experiment_configs(base)["baseline"], base=base,
                                     preset="baseline", base_preset="micro")  # fmt: skip
        session.commit()
        experiment_id = exp.id
    with session_scope(dep.url) as session:
        claim = leases.claim_run(
            session=session, experiment_id=experiment_id, owner=owner, worker_name="bench",
            device="cpu", max_restarts=5,
            stale_before=utcnow() - timedelta(seconds=dep.settings.heartbeat_timeout),
        )  # fmt: skip
    if claim.outcome != leases.ClaimOutcome.claimed:
        raise RuntimeError(f"could not claim experiment {experiment_id}: {claim}")
    return experiment_id


class ProgressWriter(threading.Thread):
    """The heartbeat a training worker writes between epochs: progress (the Progress
    fields) every `interval` seconds; `beats` holds the time.monotonic() of each write."""

    def __init__(self, dep: Deployment, experiment_id: int, owner: str, interval: float):
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
                with session_scope(self.dep.url) as session:
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


async def _follow_events(dep: Deployment, experiment_id: int, streams: int, window: float,
                         warmup: float, writer: ProgressWriter) -> dict[str, Any]:  # fmt: skip
    """`streams` event streams on the run; after `warmup` (and until each has had a progress
    event), the API's CPU over `window` seconds and what each stream received."""
    import httpx

    path = f"/experiments/{experiment_id}/events"
    counts: list[Counter[str]] = [Counter() for _ in range(streams)]
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

    async with httpx.AsyncClient(base_url=dep.base_url, limits=limits, timeout=timeout) as c:
        tasks = [asyncio.create_task(follow(i, c)) for i in range(streams)]
        await asyncio.sleep(warmup)
        deadline = time.monotonic() + 60
        while not all(n["progress"] for n in counts) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        before = [Counter(n) for n in counts]
        beats0 = len(writer.beats)
        cpu0, t0 = session_cpu_seconds(dep.api.pid), time.monotonic()
        await asyncio.sleep(window)
        cpu1, t1 = session_cpu_seconds(dep.api.pid), time.monotonic()
        beats = len(writer.beats) - beats0
        still = sum(connected)
        got = [n - b for n, b in zip(counts, before, strict=True)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"cpu_s": cpu1 - cpu0, "wall_s": t1 - t0, "connected": still, "got": got,
            "total": counts, "beats": beats, "errors": errors}  # fmt: skip


def sse_fanout(dep: Deployment, streams: int, window: float, warmup: float) -> list[dict]:
    """The API's CPU, as a fraction of one core, while `streams` event streams follow one
    running run between epochs (progress only), beside the same window with none."""
    settings = dep.settings
    owner = f"bench-events-{os.getpid()}"
    experiment_id = running_run(dep, owner)
    writer = ProgressWriter(dep, experiment_id, owner, settings.progress_interval)
    writer.start()
    try:
        time.sleep(min(warmup, 2.0))  # the first write in, the API settled
        cpu0, t0 = session_cpu_seconds(dep.api.pid), time.monotonic()
        time.sleep(window)
        idle = {"cpu_s": session_cpu_seconds(dep.api.pid) - cpu0,
                "wall_s": time.monotonic() - t0}  # fmt: skip
        busy = asyncio.run(_follow_events(dep, experiment_id, streams, window, warmup, writer))
    finally:
        writer.stop()
    params = {"run": "running, between epochs", "window_s": window, "warmup_s": warmup,
              "api_workers": dep.api.workers, "progress_interval_s": settings.progress_interval,
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
        "target": target_entry(f"API CPU with {streams} event streams on one run (cores)",
                               fraction, SSE_CORE_FRACTION, bound_text=f"< {SSE_CORE_FRACTION:g}, "
                               "every stream connected and fed",
                               met=fraction < SSE_CORE_FRACTION and ok),
    })  # fmt: skip
    return rows
