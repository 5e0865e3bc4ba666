"""Experiments: submit, list, inspect, follow metrics, judge, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.deps import QueueDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.params import ExperimentId, Offset, only_query
from api.plan import plan
from api.schemas import (
    ExperimentCreate,
    ExperimentList,
    ExperimentPlan,
    ExperimentRead,
    MetricsRead,
    ResultRead,
    VerdictRead,
)
from api.specs import (
    check_base_batch_size,
    check_run,
    check_values,
    resolve_base,
    resolve_config,
)
from api.submit import submit
from api.verdicts import NoVerdict, verdict
from store import runs
from store.db import session_scope
from store.models import FINISHED, Experiment, Status

router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentRead,
    responses={
        200: {"model": ExperimentPlan, "description": "dry_run=true: what the run would be"},
        **error_responses(400, 404, 413, 422, e404="the baseline_id names no experiment"),
    },
    # a misspelt ?dryrun=true must not store and queue the run it meant only to check
    dependencies=[only_query("dry_run")],
)
def create_experiment(
    *,
    body: ExperimentCreate,
    session: SessionDep,
    queue: QueueDep,
    response: Response,
    dry_run: Annotated[
        bool,
        Query(description="check and size the run, store and queue nothing: 200 with a plan"),
    ] = False,
) -> Experiment | Response:
    check_values(body.model_dump(exclude_unset=True))
    base_overrides = body.base.model_dump(exclude_unset=True)
    check_base_batch_size(base_overrides=base_overrides, applies=body.dense)
    base = resolve_base(base_preset=body.base_preset, overrides=base_overrides)
    config = resolve_config(
        name=body.name,
        base=base,
        preset=body.preset,
        dense=body.dense,
        overrides=body.config.model_dump(exclude_unset=True),
    )
    check_run(config=config, base=base, dense=body.dense)
    if body.baseline_id is not None:
        _check_baseline(session, body.baseline_id)
    if dry_run:
        answer = ExperimentPlan.model_validate(plan(config, base, dense=body.dense))
        return JSONResponse(answer.model_dump(mode="json"))
    experiment = runs.create_experiment(
        session=session,
        name=body.name,
        config=config,
        base=base,
        preset=body.preset,
        base_preset=body.base_preset,
        dense=body.dense,
        baseline_id=body.baseline_id,
    )
    submit(session=session, queue=queue, experiments=[experiment])
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return experiment


@router.get(
    "",
    response_model=ExperimentList,
    responses=error_responses(422),
    dependencies=[only_query("status", "limit", "offset")],
)
def list_experiments(
    *,
    session: SessionDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> dict:
    items, total = runs.list_experiments(session=session, status=status, limit=limit, offset=offset)
    return {"items": items, "total": total}


@router.get("/{experiment_id}", response_model=ExperimentRead, responses=error_responses(404, 422))
def read_experiment(*, experiment_id: ExperimentId, session: SessionDep) -> Experiment:
    return _get_or_404(session, experiment_id)


@router.get(
    "/{experiment_id}/metrics",
    response_model=MetricsRead,
    responses={
        304: {"description": "unchanged since the ETag given in If-None-Match"},
        **error_responses(404, 422),
    },
)
async def read_experiment_metrics(
    *, experiment_id: ExperimentId, request: Request, settings: SettingsDep
) -> Response:
    # async, with the database only on a cache miss: dashboards poll this, and a hit should
    # cost no thread hop, no connection and no query.
    key = (settings.database_url, experiment_id)  # one process may serve several stores (tests)
    cached = _METRICS.get(key, settings.metrics_max_age)
    if cached is None:
        # One read per expiry: the clients that miss together wait for it, rather than
        # all querying at once the moment an entry ages out.
        async with _METRICS.refreshing(key):
            cached = _METRICS.get(key, settings.metrics_max_age)
            if cached is None:
                cached = await run_in_threadpool(
                    _metrics_response, experiment_id, settings.database_url
                )
                _METRICS.put(key, cached)
    if request.headers.get("if-none-match") == cached.etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": cached.etag})
    return Response(cached.body, media_type="application/json", headers={"ETag": cached.etag})


@dataclass(frozen=True)
class _Metrics:
    body: bytes
    etag: str
    final: bool  # a finished run's metrics never change
    at: float = field(default_factory=time.monotonic)


def _metrics_response(experiment_id: int, database_url: str) -> _Metrics:
    with session_scope(database_url) as session:
        status_ = runs.experiment_status(session=session, experiment_id=experiment_id)
        if status_ is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment_id} not found")
        epochs = runs.epoch_records(session=session, experiment_id=experiment_id)
    # Serialised here, not through response_model: the rows already have MetricsRead's
    # shape (a test holds them to it), and validating hundreds of nested rows would
    # dominate the read.
    body = json.dumps(
        {"experiment_id": experiment_id, "status": status_, "epochs": epochs},
        separators=(",", ":"),
    ).encode()
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    return _Metrics(body, etag, final=status_ in FINISHED)


class _MetricsCache:
    """Metrics responses per experiment: a finished run's until evicted, a running run's
    for `max_age` seconds (the freshness the settings promise)."""

    def __init__(self, size: int = 512) -> None:
        self._entries: OrderedDict[tuple[str, int], _Metrics] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()  # the miss path runs in the thread pool
        self._refreshes: dict[tuple[str, int], asyncio.Lock] = {}

    def refreshing(self, key: tuple[str, int]) -> asyncio.Lock:
        """The lock that one refresh of `key` holds (handlers run on one event loop)."""
        if len(self._refreshes) > 4 * self._size:
            self._refreshes = {k: v for k, v in self._refreshes.items() if v.locked()}
        return self._refreshes.setdefault(key, asyncio.Lock())

    def get(self, key: tuple[str, int], max_age: float) -> _Metrics | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not (entry.final or time.monotonic() - entry.at < max_age):
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[str, int], entry: _Metrics) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


_METRICS = _MetricsCache()


@router.get(
    "/{experiment_id}/result",
    response_model=ResultRead,
    responses=error_responses(404, 409, 422, e409="the run has not succeeded"),
)
def read_result(*, experiment_id: ExperimentId, session: SessionDep) -> dict:
    experiment = _get_or_404(session, experiment_id)
    if experiment.status != Status.succeeded:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} is {experiment.status}; a result needs it succeeded",
        )
    return runs.stored_result(experiment)


@router.get(
    "/{experiment_id}/verdict",
    response_model=VerdictRead,
    responses=error_responses(404, 409, 422, e409="a run is unfinished, or there is no baseline"),
)
def read_verdict(*, experiment_id: ExperimentId, session: SessionDep) -> dict:
    experiment = _get_or_404(session, experiment_id)
    baseline = (
        runs.get_experiment(session=session, experiment_id=experiment.baseline_id)
        if experiment.baseline_id is not None
        else None
    )
    try:
        return verdict(experiment, baseline)
    except NoVerdict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.post(
    "/{experiment_id}/cancel",
    response_model=ExperimentRead,
    responses=error_responses(404, 409, 422, e409="the run already succeeded or failed"),
)
def cancel_experiment(
    *, experiment_id: ExperimentId, session: SessionDep, settings: SettingsDep
) -> Experiment:
    experiment = _get_or_404(session, experiment_id)
    if experiment.status in (Status.succeeded, Status.failed):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"experiment {experiment_id} already {experiment.status}"
        )
    runs.request_cancel(
        session=session,
        experiment_id=experiment_id,
        stale_before=runs.stale_cutoff(settings.heartbeat_timeout),
    )
    return _get_or_404(session, experiment_id)


def _check_baseline(session: SessionDep, baseline_id: int) -> None:
    baseline = runs.get_experiment(session=session, experiment_id=baseline_id)
    if baseline is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"baseline {baseline_id} not found")
    if not baseline.dense:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "baseline_id"),
                    "msg": f"experiment {baseline.id} is not a dense run",
                    "input": baseline_id,
                }
            ]
        )


def _get_or_404(session: SessionDep, experiment_id: int) -> Experiment:
    experiment = runs.get_experiment(session=session, experiment_id=experiment_id)
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment_id} not found")
    return experiment
