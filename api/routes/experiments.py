"""Experiments: submit, list, inspect, follow metrics, judge, cancel."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError

from api import crud
from api.deps import QueueDep, SessionDep, SettingsDep
from api.models import Experiment, Status
from api.schemas import (
    ExperimentCreate,
    ExperimentList,
    ExperimentRead,
    MetricsRead,
    ResultRead,
    VerdictRead,
)
from api.specs import resolve_base, resolve_config
from api.submit import submit
from api.verdicts import NoVerdict, verdict

router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ExperimentRead)
def create_experiment(
    *, body: ExperimentCreate, session: SessionDep, queue: QueueDep, response: Response
) -> Experiment:
    base = resolve_base(base_preset=body.base_preset, overrides=body.base)
    config = resolve_config(
        name=body.name, base=base, preset=body.preset, dense=body.dense, overrides=body.config
    )
    if body.baseline_id is not None:
        _check_baseline(session, body.baseline_id)
    experiment = crud.create_experiment(
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


@router.get("", response_model=ExperimentList)
def list_experiments(
    *,
    session: SessionDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict:
    items, total = crud.list_experiments(session=session, status=status, limit=limit, offset=offset)
    return {"items": items, "total": total}


@router.get("/{experiment_id}", response_model=ExperimentRead)
def read_experiment(*, experiment_id: int, session: SessionDep) -> Experiment:
    return _get_or_404(session, experiment_id)


@router.get("/{experiment_id}/metrics", response_model=MetricsRead)
def read_metrics(*, experiment_id: int, session: SessionDep, request: Request) -> Response:
    found = crud.metrics_version(session=session, experiment_id=experiment_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment_id} not found")
    status_, count, latest = found
    etag = f'"{experiment_id}-{status_}-{count}-{latest.timestamp() if latest else 0}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    epochs = _EPOCHS.get(experiment_id, (count, latest))
    if epochs is None:
        # Serialised here, not through response_model: the rows already have MetricsRead's
        # shape (a test holds them to it), and validating hundreds of nested rows on every
        # poll would dominate the read.
        rows = crud.epoch_records(session=session, experiment_id=experiment_id)
        epochs = json.dumps(rows, separators=(",", ":"))
        _EPOCHS.put(experiment_id, (count, latest), epochs)
    body = f'{{"experiment_id":{experiment_id},"status":"{status_}","epochs":{epochs}}}'
    return Response(body, media_type="application/json", headers={"ETag": etag})


class _EpochsCache:
    """Serialised epochs per experiment, under the version `crud.metrics_version` reads.

    Finished epochs never change unless replayed, which changes the version, so an entry
    is either current or replaced; dashboards polling a run re-serialise nothing.
    """

    def __init__(self, size: int = 256) -> None:
        self._entries: OrderedDict[int, tuple[tuple[int, Any], str]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()  # sync handlers run in a thread pool

    def get(self, experiment_id: int, version: tuple[int, Any]) -> str | None:
        with self._lock:
            entry = self._entries.get(experiment_id)
            if entry is None or entry[0] != version:
                return None
            self._entries.move_to_end(experiment_id)
            return entry[1]

    def put(self, experiment_id: int, version: tuple[int, Any], epochs: str) -> None:
        with self._lock:
            self._entries[experiment_id] = (version, epochs)
            self._entries.move_to_end(experiment_id)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


_EPOCHS = _EpochsCache()


@router.get(
    "/{experiment_id}/result",
    response_model=ResultRead,
    responses={409: {"description": "the run has not succeeded"}},
)
def read_result(*, experiment_id: int, session: SessionDep) -> dict:
    experiment = _get_or_404(session, experiment_id)
    if experiment.status != Status.succeeded:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} is {experiment.status}; a result needs it succeeded",
        )
    return {"config": experiment.config, "metrics": experiment.metrics, "params": experiment.params}


@router.get(
    "/{experiment_id}/verdict",
    response_model=VerdictRead,
    responses={409: {"description": "a run is unfinished, or there is no baseline"}},
)
def read_verdict(*, experiment_id: int, session: SessionDep) -> dict:
    experiment = _get_or_404(session, experiment_id)
    baseline = (
        crud.get_experiment(session=session, experiment_id=experiment.baseline_id)
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
    responses={409: {"description": "the run already succeeded or failed"}},
)
def cancel_experiment(
    *, experiment_id: int, session: SessionDep, settings: SettingsDep
) -> Experiment:
    experiment = _get_or_404(session, experiment_id)
    if experiment.status in (Status.succeeded, Status.failed):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"experiment {experiment_id} already {experiment.status}"
        )
    crud.request_cancel(
        session=session,
        experiment_id=experiment_id,
        stale_before=crud.stale_cutoff(settings.heartbeat_timeout),
    )
    return _get_or_404(session, experiment_id)


def _check_baseline(session: SessionDep, baseline_id: int) -> None:
    baseline = crud.get_experiment(session=session, experiment_id=baseline_id)
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
    experiment = crud.get_experiment(session=session, experiment_id=experiment_id)
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment_id} not found")
    return experiment
