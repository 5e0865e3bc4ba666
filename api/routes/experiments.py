"""Experiments: submit, list, inspect, label, follow, judge, cancel, delete. A run's files
(its log and artifacts) are served by api.routes.run_files."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from api import conditional, live, rules
from api.auth import CallerDep, MemberDep, authorize_change, forbidden
from api.deps import QueueDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.params import (
    ExperimentId,
    IdempotencyKey,
    Offset,
    OwnerQuery,
    SortQuery,
    WhereQuery,
    owner_named,
    run_conditions,
)
from api.plan import plan
from api.quota import check_queue_room
from api.requests import MAX_TAGS, ExperimentCreate, ExperimentPreset, ExperimentUpdate, Tag
from api.resolve import MAX_ID, check_values, resolve_experiment
from api.schemas import (
    ExperimentList,
    ExperimentPlan,
    ExperimentRead,
    MetricsRead,
    ResultRead,
    StepsRead,
    VerdictRead,
)
from api.submit import request_hash, store_once, submit
from api.verdicts import NoVerdict, verdict
from moe_core import comparable
from moe_core.config import BaseConfig, ExperimentConfig
from moe_core.verdict_records import ServedVerdict
from store import artifacts, audit, catalogue, leases, results
from store.catalogue import ExperimentFilter, Order
from store.models import Experiment, Status

router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentRead,
    responses={
        200: {
            "model": ExperimentRead | ExperimentPlan,
            "description": "the run an earlier request with this Idempotency-Key stored; "
            "or, with dry_run=true, what the run would be (ExperimentPlan)",
        },
        **error_responses(
            400,
            404,
            409,
            413,
            422,
            429,
            503,
            e404="the baseline_id names no experiment",
            e409="the Idempotency-Key was used with another body, or by another user",
            e503="the database or the task broker is unreachable, or busy; nothing was "
            "stored: retry after Retry-After seconds",
        ),
    },
)
def create_experiment(
    *,
    body: ExperimentCreate,
    caller: MemberDep,
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
    dry_run: Annotated[
        bool,
        Query(description="check and size the run, store and queue nothing: 200 with a plan"),
    ] = False,
    idempotency_key: IdempotencyKey = None,
) -> Experiment | Response:
    config, base = resolve_experiment(body, settings=settings)
    if body.baseline_id is not None:
        _check_baseline(session, body.baseline_id, base=base.model_dump())
    if dry_run:
        answer = ExperimentPlan.model_validate(plan(config, base, dense=body.dense))
        return JSONResponse(answer.model_dump(mode="json"))
    digest = request_hash(body)

    def add() -> Experiment:
        check_queue_room(session=session, settings=settings, caller=caller, adding=1)
        experiment = catalogue.create_experiment(
            session=session, name=body.name, config=config, base=base, preset=body.preset,
            base_preset=body.base_preset, dense=body.dense, baseline_id=body.baseline_id,
            tags=body.tags, idempotency_key=idempotency_key, request_hash=digest,
            owner=caller.name,
        )  # fmt: skip
        audit.record(session=session, actor=caller.name, action="experiment.create",
                     target=f"experiment {experiment.id}",
                     detail={"name": body.name, "preset": body.preset, "dense": body.dense})  # fmt: skip
        return experiment

    experiment, new = store_once(
        session=session, model=Experiment, idempotency_key=idempotency_key, digest=digest,
        add=add, owner=caller.name,
    )  # fmt: skip
    if new:
        submit(session=session, queue=queue, experiments=[experiment])
    else:
        response.status_code = status.HTTP_200_OK  # a replay: the original, stored once
    response.headers["Location"] = f"/experiments/{experiment.id}"
    return experiment


@router.get(
    "",
    response_model=ExperimentList,
    responses={**conditional.NOT_MODIFIED, **error_responses(422)},
)
def list_experiments(
    *,
    request: Request,
    session: SessionDep,
    status: Status | None = None,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            pattern=r"^[^\x00]+$",
            description="part of the name, any case",
        ),  # fmt: skip
    ] = None,
    tag: Tag | None = None,
    study_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    preset: ExperimentPreset | None = None,
    dense: Annotated[bool | None, Query(description="dense baselines only, or MoE only")] = None,
    owner: OwnerQuery = None,
    caller: CallerDep,
    order: Annotated[
        Order, Query(description="newest first, or by best validation CE, lowest first")
    ] = Order.newest,
    where: WhereQuery = None,
    sort: SortQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> Response:
    conditions, sort_by = run_conditions(where or [], sort)
    chosen = ExperimentFilter(status=status, name=name, tag=tag, study_id=study_id, preset=preset,
                              dense=dense, owner=owner_named(owner, caller), conditions=conditions)  # fmt: skip
    items, total = catalogue.list_experiments(
        session=session, where=chosen, order=order, sort=sort_by, limit=limit, offset=offset
    )
    studies, sweeps = catalogue.group_names(session=session, runs=items)
    page = {"items": items, "total": total, "study_names": studies, "sweep_names": sweeps}
    # the dashboard polls this: a 304 when nothing in the page changed
    return conditional.answer_model(request, ExperimentList, page)


@router.get("/{experiment_id}", response_model=ExperimentRead, responses=error_responses(404, 422))
def read_experiment(*, experiment_id: ExperimentId, session: SessionDep) -> Experiment:
    return _get_or_404(session, experiment_id)


@router.get(
    "/{experiment_id}/plan",
    response_model=ExperimentPlan,
    responses=error_responses(404, 422),
)
def read_plan(*, experiment_id: ExperimentId, session: SessionDep) -> dict[str, Any]:
    """The stored run's dry-run plan (its size before any epoch): what the dashboard shows
    of a run that has no result yet."""
    experiment = _get_or_404(session, experiment_id)
    config = ExperimentConfig.model_validate(experiment.config)
    base = BaseConfig.model_validate(experiment.base)
    return plan(config, base, dense=experiment.dense)


@router.patch(
    "/{experiment_id}",
    response_model=ExperimentRead,
    responses=error_responses(
        400,
        404,
        413,
        422,
        e422="a bad tag or note, too many tags, or a field other than tags and note "
        "(every other field is immutable)",
    ),
)
def update_experiment(
    *, experiment_id: ExperimentId, body: ExperimentUpdate, caller: CallerDep, session: SessionDep
) -> Experiment:
    """Add and remove a run's tags, set or clear its note (its owner or an admin), set its
    priority in the queue (an admin); the rest of a run is what was run, and stays. The
    list's ETag changes with them (GET /experiments)."""
    check_values(body.model_dump(exclude_unset=True))
    run = _get_or_404(session, experiment_id)
    authorize_change(caller, run.owner, f"experiment {experiment_id}", "change")
    if "priority" in body.model_fields_set:
        if not caller.admin:
            raise forbidden(f"{caller.name} is a {caller.role}: only an admin sets a priority")
        run.priority = body.priority or 0
    audit.record(session=session, actor=caller.name, action="experiment.update",
                 target=f"experiment {experiment_id}",
                 detail=body.model_dump(mode="json", exclude_unset=True))  # fmt: skip
    changes = body.tags
    try:
        experiment = catalogue.update_labels(
            session=session,
            experiment_id=experiment_id,
            add_tags=changes.add if changes else (),
            remove_tags=changes.remove if changes else (),
            note=body.note if "note" in body.model_fields_set else catalogue.KEEP_NOTE,
            max_tags=MAX_TAGS,
        )
    except catalogue.TooManyTags as exc:
        raise RequestValidationError(
            [
                rules.TOO_MANY_TAGS.error(
                    ("body", "tags", "add"), str(exc), changes.add if changes else []
                )
            ]
        ) from None
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment_id} not found")
    return experiment


@router.get(
    "/{experiment_id}/metrics",
    response_model=MetricsRead,
    responses={**conditional.NOT_MODIFIED, **error_responses(404, 422)},
)
async def read_experiment_metrics(
    *, experiment_id: ExperimentId, request: Request, settings: SettingsDep
) -> Response:
    # async, with the database only on a cache miss: dashboards poll this, and a hit should
    # cost no thread hop, no connection and no query.
    cached = await live.metrics_of(experiment_id, settings)
    return conditional.answer(request, cached.body, cached.etag)


@router.get(
    "/{experiment_id}/steps",
    response_model=StepsRead,
    responses={**conditional.NOT_MODIFIED, **error_responses(404, 422)},
)
async def read_experiment_steps(
    *,
    experiment_id: ExperimentId,
    request: Request,
    settings: SettingsDep,
    after_step: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="only the points after this step")
    ] = None,
) -> Response:
    """The run's step points (every `every` steps), in step order; cached like /metrics."""
    cached = await live.steps_of(experiment_id, settings)
    if after_step is None:
        return conditional.answer(request, cached.body, cached.etag)
    body = live.steps_body(experiment_id, cached.every, cached.after(after_step))
    return conditional.answer(request, body)


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
    return results.stored_result(experiment)


@router.get(
    "/{experiment_id}/verdict",
    response_model=VerdictRead,
    responses=error_responses(404, 409, 422, e409="a run is unfinished, or there is no baseline"),
)
def read_verdict(*, experiment_id: ExperimentId, session: SessionDep) -> ServedVerdict:
    experiment = _get_or_404(session, experiment_id)
    baseline = (
        catalogue.get_experiment(session=session, experiment_id=experiment.baseline_id)
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
    *, experiment_id: ExperimentId, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> Experiment:
    experiment = _get_or_404(session, experiment_id)
    authorize_change(caller, experiment.owner, f"experiment {experiment_id}", "cancel")
    if experiment.status in (Status.succeeded, Status.failed):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"experiment {experiment_id} already {experiment.status}"
        )
    audit.record(session=session, actor=caller.name, action="experiment.cancel",
                 target=f"experiment {experiment_id}")  # fmt: skip
    catalogue.request_cancel(
        session=session,
        experiment_id=experiment_id,
        stale_before=leases.stale_cutoff(settings.heartbeat_timeout),
    )
    return _get_or_404(session, experiment_id)


@router.delete(
    "/{experiment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(
        404,
        409,
        422,
        e409="the run is queued or running (cancel it first), or a study's or a sweep's",
    ),
)
def delete_experiment(
    *, experiment_id: ExperimentId, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Remove a finished run: its rows and its files (its owner or an admin)."""
    experiment = _get_or_404(session, experiment_id)
    authorize_change(caller, experiment.owner, f"experiment {experiment_id}", "delete")
    if experiment.study_id is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} belongs to study {experiment.study_id}; delete the study",
        )
    if experiment.sweep_id is not None:
        # a sweep judges its trials against its dense runs: a run goes with its sweep only
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} belongs to sweep {experiment.sweep_id}; delete the "
            "sweep once it has ended",
        )
    run_key = experiment.run_key
    audit.record(session=session, actor=caller.name, action="experiment.delete",
                 target=f"experiment {experiment_id}", detail={"name": experiment.name})  # fmt: skip
    if not catalogue.delete_experiment(session=session, experiment_id=experiment_id):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} is {experiment.status}; cancel it before deleting it",
        )
    artifacts.remove_run(settings, run_key)
    live.forget(experiment_id, settings)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# One server-sent event: `data` is the JSON of the object its `event` names.
_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["epoch", "steps", "progress", "status"]},
        "id": {
            "type": "string",
            "description": "the last epoch delivered, `E`, or `E:S` once step points were",
        },
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
    "required": ["event", "id", "data"],
}


@router.get(
    "/{experiment_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "server-sent events: `epoch` (an EpochFigures), `steps` "
            "({points: [StepPoint]}), `progress` (a Progress), `status` ({status, error, "
            "current_epoch}); the stream ends after a terminal status. Each id is the last "
            "epoch sent, `E`, or with step points sent `E:S` (S the last point's step): "
            "reconnect with Last-Event-ID to resume after it.",
            "content": {"text/event-stream": {"schema": _EVENT_SCHEMA}},
        },
        **error_responses(404, 422),
    },
)
async def follow_experiment(
    *,
    experiment_id: ExperimentId,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=32, description="resume after this event"),
    ] = None,
) -> EventSourceResponse:
    await live.snapshot_of(experiment_id, settings)  # a 404 before the stream starts
    epoch, step = live.resume_point(last_event_id)
    stream = live.events(experiment_id, settings, after_epoch=epoch, after_step=step)
    # A comment every 15 s keeps proxies from closing a quiet stream (an epoch can be long).
    return EventSourceResponse(stream, ping=15)


def _check_baseline(session: SessionDep, baseline_id: int, *, base: dict[str, Any]) -> None:
    """The baseline exists, is a dense run, and its cross-entropy compares with this run's
    (moe_core.comparable): a verdict against another base's dense run means nothing."""
    baseline = catalogue.get_experiment(session=session, experiment_id=baseline_id)
    if baseline is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"baseline {baseline_id} not found")
    if not baseline.dense:
        raise RequestValidationError([
            rules.BASELINE_NOT_DENSE.error(
                ("body", "baseline_id"), f"experiment {baseline.id} is not a dense run", baseline_id
            )
        ])  # fmt: skip
    differing = comparable.differences(base, baseline.base)
    if differing:
        raise RequestValidationError([
            rules.BASELINE_NOT_COMPARABLE.error(
                ("body", "baseline_id"),
                f"dense run {baseline.id} is not comparable with this run: "
                f"{comparable.describe(differing)} (this run's first); its base must have the "
                f"same {', '.join(differing)}",
                baseline_id,
            )
        ])  # fmt: skip


def _get_or_404(session: SessionDep, experiment_id: int) -> Experiment:
    experiment = catalogue.get_experiment(session=session, experiment_id=experiment_id)
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"experiment {experiment_id} not found")
    return experiment
