"""Following a run: its metrics (cached, since dashboards poll them) and its event stream.

Many clients may follow one run. Each read the database once per interval per run, however
many clients ask (api.read_cache); each stream then only compares the shared snapshot with
what it last sent, so a hundred streams on one run cost the database what one does.

The event stream (`GET /experiments/{id}/events`, server-sent events):
- `epoch`: each finished epoch, the same object as an item of /metrics' `epochs`;
- `steps`: `{"points": [...]}`, step points as /steps serves them, in step order, as the
  worker writes them (every few seconds; up to STEPS_PER_EVENT points an event);
- `progress`: where the running run is (step, steps per epoch, tokens/s, ETA);
- `status`: the status (with the error and current epoch) whenever it changes; the stream
  ends after a terminal one.
Every event's id is where the stream stands: the last epoch it has delivered, `E`, or
once it has delivered step points, `E:S` with S the last point's step. A client that
reconnects with `Last-Event-ID` gets the epochs after E and the points after S, then the
current status and progress: epochs and points are never missed nor repeated, and status
and progress are states, sent again rather than replayed.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.conditional import etag_of
from api.read_cache import ReadCache
from moe_core.records import StepPoint
from store import catalogue, results, steps
from store.db import session_scope
from store.models import FINISHED
from store.settings import Settings


@dataclass(frozen=True)
class Metrics:
    """GET /experiments/{id}/metrics' body, serialised once."""

    body: bytes
    etag: str
    final: bool  # a finished run's metrics never change
    at: float = field(default_factory=time.monotonic)

    def epochs(self) -> list[dict[str, Any]]:
        return json.loads(self.body)["epochs"]


@dataclass(frozen=True)
class Steps:
    """GET /experiments/{id}/steps' body, serialised once, and its points for the event
    stream and `after_step` reads."""

    body: bytes
    etag: str
    every: int | None
    points: list[StepPoint]
    final: bool
    at: float = field(default_factory=time.monotonic)

    def after(self, step: int) -> list[StepPoint]:
        """The points after `step` (they are in step order)."""
        i = bisect.bisect_right([p["step"] for p in self.points], step)
        return self.points[i:]


@dataclass(frozen=True)
class Snapshot:
    """A run's status and progress, as one stream tick needs them."""

    status: str
    error: str | None
    current_epoch: int
    last_step: int  # the last step point stored (0: none)
    progress: dict[str, Any] | None
    final: bool
    at: float = field(default_factory=time.monotonic)

    def status_event(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "current_epoch": self.current_epoch}


# What a stream waits out rather than ends on: the database away or its pool exhausted.
DATABASE_AWAY = (OperationalError, InterfaceError, PoolTimeout)

_METRICS: ReadCache[Metrics] = ReadCache()
_SNAPSHOTS: ReadCache[Snapshot] = ReadCache()
_STEPS: ReadCache[Steps] = ReadCache()

# A reconnect of a run's page gets up to 2,000 points: a few events, not one of ~400 kB.
STEPS_PER_EVENT = 500


def _not_found(experiment_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment_id} not found")


async def metrics_of(experiment_id: int, settings: Settings) -> Metrics:
    """The run's metrics, at most settings.metrics_max_age old (a finished run's a minute)."""
    return await _read_through(_METRICS, _read_metrics, experiment_id, settings,
                               settings.metrics_max_age)  # fmt: skip


async def _read_through(cache, read, experiment_id: int, settings: Settings, max_age: float):
    """`cache`'s entry for the run, or `read(experiment_id, database_url)` in a thread."""
    key = (settings.database_url, experiment_id)  # one process may serve several stores

    async def load():
        return await run_in_threadpool(read, experiment_id, settings.database_url)

    return await cache.read(key, max_age, load)


def _read_metrics(experiment_id: int, database_url: str) -> Metrics:
    with session_scope(database_url) as session:
        status_ = catalogue.experiment_status(session=session, experiment_id=experiment_id)
        if status_ is None:
            raise _not_found(experiment_id)
        epochs = results.epoch_records(session=session, experiment_id=experiment_id)
    # Serialised here, not through response_model: the rows already have MetricsRead's
    # shape (a test holds them to it), and validating hundreds of nested rows would
    # dominate the read.
    body = json.dumps(
        {"experiment_id": experiment_id, "status": status_, "epochs": epochs},
        separators=(",", ":"),
    ).encode()
    return Metrics(body, etag_of(body), final=status_ in FINISHED)


async def steps_of(experiment_id: int, settings: Settings) -> Steps:
    """The run's step points, at most settings.metrics_max_age old, like its metrics."""
    return await _read_through(_STEPS, _read_steps, experiment_id, settings,
                               settings.metrics_max_age)  # fmt: skip


def _read_steps(experiment_id: int, database_url: str) -> Steps:
    with session_scope(database_url) as session:
        status_ = catalogue.experiment_status(session=session, experiment_id=experiment_id)
        if status_ is None:
            raise _not_found(experiment_id)
        every = steps.every(session=session, experiment_id=experiment_id)
        points = steps.step_points(session=session, experiment_id=experiment_id)
    body = steps_body(experiment_id, every, points)
    return Steps(body, etag_of(body), every, points, final=status_ in FINISHED)


def steps_body(experiment_id: int, every: int | None, points: list[StepPoint]) -> bytes:
    # Serialised here, not through response_model: the rows have StepsRead's shape (a test
    # holds them to it), and validating 2,000 of them would dominate the read.
    body = {"experiment_id": experiment_id, "every": every, "points": points}
    return json.dumps(body, separators=(",", ":")).encode()


async def snapshot_of(experiment_id: int, settings: Settings) -> Snapshot:
    """The run's status and progress, at most settings.event_poll_seconds old."""
    return await _read_through(_SNAPSHOTS, _read_snapshot, experiment_id, settings,
                               settings.event_poll_seconds)  # fmt: skip


def _read_snapshot(experiment_id: int, database_url: str) -> Snapshot:
    with session_scope(database_url) as session:
        row = catalogue.live_state(session=session, experiment_id=experiment_id)
        if row is None:
            raise _not_found(experiment_id)
        last_step = steps.last_step(session=session, experiment_id=experiment_id)
    return Snapshot(
        status=row.status,
        error=row.error,
        current_epoch=row.current_epoch,
        last_step=last_step,
        progress=row.progress if row.status == "running" else None,
        final=row.status in FINISHED,
    )


def forget(experiment_id: int, settings: Settings) -> None:
    """Drop what is cached of a run (it was deleted)."""
    key = (settings.database_url, experiment_id)
    _METRICS.forget(key)
    _SNAPSHOTS.forget(key)
    _STEPS.forget(key)


def resume_point(last_event_id: str | None) -> tuple[int, int]:
    """The epoch and step a reconnecting client had reached ((0, 0): none, or an id not
    ours): ids are `E` or `E:S` (see _event_id)."""
    epoch, _, step = (last_event_id or "").partition(":")
    try:
        return max(0, int(epoch or 0)), max(0, int(step or 0))
    except ValueError:
        return 0, 0


def _event_id(epoch: int, step: int) -> str:
    # Just the epoch until a point is sent: what clients of streams without points saw.
    return f"{epoch}:{step}" if step else str(epoch)


async def events(
    experiment_id: int, settings: Settings, *, after_epoch: int = 0, after_step: int = 0
) -> AsyncIterator[dict[str, Any]]:
    """The run's events (sse-starlette's dicts) after epoch `after_epoch` and the step
    point of `after_step`, until it ends."""
    sent_epoch, sent_step = after_epoch, after_step
    sent_status: dict[str, Any] | None = None
    sent_progress: dict[str, Any] | None = None
    while True:
        try:
            snapshot = await snapshot_of(experiment_id, settings)
            records, points = [], []
            if snapshot.current_epoch > sent_epoch:
                records = (await metrics_of(experiment_id, settings)).epochs()
            if snapshot.last_step > sent_step:
                points = (await steps_of(experiment_id, settings)).after(sent_step)
        except HTTPException:  # deleted while followed
            yield _event("status", {"status": "deleted", "error": None,
                                    "current_epoch": sent_epoch}, sent_epoch, sent_step)  # fmt: skip
            return
        except DATABASE_AWAY:  # a restart or failover: the stream waits it out
            await asyncio.sleep(max(settings.event_poll_seconds, 1.0))
            continue
        for record in records:
            if record["epoch"] > sent_epoch:
                sent_epoch = record["epoch"]
                yield _event("epoch", record, sent_epoch, sent_step)
        for i in range(0, len(points), STEPS_PER_EVENT):
            chunk = points[i : i + STEPS_PER_EVENT]
            sent_step = chunk[-1]["step"]
            yield _event("steps", {"points": chunk}, sent_epoch, sent_step)
        # A terminal status goes out only after every epoch and point it counts: the
        # caches may be a moment behind the snapshot.
        caught_up = sent_epoch >= snapshot.current_epoch and sent_step >= snapshot.last_step
        if snapshot.status_event() != sent_status and (caught_up or not snapshot.final):
            sent_status = snapshot.status_event()
            yield _event("status", sent_status, sent_epoch, sent_step)
            if snapshot.final:
                return
        if snapshot.progress is not None and snapshot.progress != sent_progress:
            sent_progress = snapshot.progress
            yield _event("progress", sent_progress, sent_epoch, sent_step)
        await asyncio.sleep(settings.event_poll_seconds)


def _event(name: str, data: dict[str, Any], epoch: int, step: int) -> dict[str, Any]:
    return {"event": name, "id": _event_id(epoch, step),
            "data": json.dumps(data, separators=(",", ":"))}  # fmt: skip
