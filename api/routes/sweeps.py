"""Sweeps: a design space searched as one call, each trial a set of runs (one per seed)
judged against the sweep's dense run of the same seed (store.sweeps, moe_core.search).
POST /sweeps goes the way of every body: api.requests' model, one resolve call, a plan for
the dry run, idempotent storing, enqueue after commit with a rollback when the broker is
down (api.submit)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api import live
from api.auth import CallerDep, MemberDep, authorize_change
from api.deps import QueueDep, SessionDep, SettingsDep
from api.errors import error_responses
from api.limits import MAX_ID
from api.params import IdempotencyKey, Offset, OwnerQuery, owner_named
from api.quota import check_queue_room
from api.requests import SweepCreate
from api.resolve import resolve_sweep
from api.schemas import SweepList, SweepPlan, SweepRead
from api.submit import request_hash, store_once, submit
from moe_core.search import MAX_RUNS, grid_points, prune_rule, rank, why_no_best
from store import artifacts, audit, sweeps
from store.models import Experiment, Sweep

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
SweepId = Annotated[int, Path(ge=1, le=MAX_ID)]


def sweep_read(session: Session, sweep: Sweep) -> dict[str, Any]:
    runs = sweeps.run_ids(session=session, sweep_id=sweep.id)
    order = {name: i for i, name in enumerate(sweep.fields)}
    trials = [{
        "number": t.number, "state": t.state, "objective": t.objective,
        "params": dict(sorted(t.params.items(), key=lambda kv: order.get(kv[0], len(order)))),
        "passed": (t.verdict or {}).get("passed"), "pruned_at_epoch": t.pruned_at_epoch,
        "run_ids": [i for i, n in runs if n == t.number], "finished_at": t.finished_at,
    } for t in sweep.trials]  # fmt: skip
    collapsed = [t.verdict["tertiary"].get("min_usage") for t in sweep.trials
                 if t.state == "tertiary_failed" and t.verdict and "tertiary" in t.verdict]  # fmt: skip
    least = min((u for u in collapsed if u is not None), default=None)
    return {
        "id": sweep.id, "name": sweep.name, "owner": sweep.owner, "status": sweep.status,
        "parallel": sweep.parallel,
        "config": sweep.config, "fields": sweep.fields,
        "dense_run_ids": [i for i, n in runs if n is None],
        "budget": sweeps.config_of(sweep).budget(),
        "trials": trials, "ranking": rank(trials), "best_trial": sweep.best_trial,
        "no_best": why_no_best(trials, least),
        "importance": sweep.importance, "created_at": sweep.created_at,
        # a trial's seeds asked to train together are judged on their mean curve
        "prune_rule": prune_rule(sweeps.config_of(sweep), together=sweeps.on_the_mean(sweep)),
        "finished_at": sweep.finished_at,
    }  # fmt: skip


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepRead,
    responses={
        200: {
            "model": SweepRead | SweepPlan,
            "description": "the sweep an earlier request with this Idempotency-Key stored; "
            "or, with dry_run=true, what the sweep would run (SweepPlan)",
        },
        **error_responses(
            400,
            409,
            413,
            422,
            429,
            503,
            e409="the Idempotency-Key was used with another body, or by another user",
            e503="the database or the task broker is unreachable, or busy; nothing was "
            "stored: retry after Retry-After seconds",
        ),
    },
)
def create_sweep(
    *,
    body: SweepCreate,
    caller: MemberDep,
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
    dry_run: Annotated[bool, Query(description="check and size it; store nothing")] = False,
    idempotency_key: IdempotencyKey = None,
) -> dict | Response:
    """Check the sweep whole (the base and overrides as /experiments does, every value of
    the space within its field's bounds, every grid point or each choice and range end as
    a run, its size against the limit), then store it with a dense run per seed and its
    first `parallel` trials, and queue them. Workers propose the next trials as earlier
    ones end."""
    config = resolve_sweep(body, settings=settings)
    if dry_run:
        grid = len(grid_points(config.space)) if config.method == "grid" else None
        plan = SweepPlan(
            trials=config.budget(), runs=config.runs(), max_runs=MAX_RUNS, grid_points=grid
        )
        return JSONResponse(plan.model_dump(mode="json"))
    digest = request_hash(body)
    runs: list[Experiment] = []

    def add() -> Sweep:
        # what it queues now: a dense run per seed and its first trials (later trials wait
        # while their owner is at the limit: store.sweeps)
        first = config.seeds * (1 + min(body.parallel, config.budget()))
        check_queue_room(session=session, settings=settings, caller=caller, adding=first)
        sweep, created = sweeps.create_sweep(
            session=session, config=config, base=config.base_config(), parallel=body.parallel,
            idempotency_key=idempotency_key, request_hash=digest, owner=caller.name,
        )  # fmt: skip
        audit.record(session=session, actor=caller.name, action="sweep.create",
                     target=f"sweep {sweep.id}", detail={"name": config.name})  # fmt: skip
        runs.extend(created)
        return sweep

    sweep, new = store_once(
        session=session, model=Sweep, idempotency_key=idempotency_key, digest=digest, add=add,
        owner=caller.name,
    )  # fmt: skip
    if new:
        submit(session=session, queue=queue, experiments=runs, sweep=sweep)
    else:
        response.status_code = status.HTTP_200_OK  # a replay: the original, stored once
    response.headers["Location"] = f"/sweeps/{sweep.id}"
    return sweep_read(session, _get_or_404(session, sweep.id))


@router.get("", response_model=SweepList, responses=error_responses(422))
def list_sweeps(
    *, session: SessionDep, caller: CallerDep, owner: OwnerQuery = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20, offset: Offset = 0,
) -> dict:  # fmt: skip
    items, total = sweeps.list_sweeps(session=session, limit=limit, offset=offset,
                                      owner=owner_named(owner, caller))  # fmt: skip
    return {"items": [sweep_read(session, s) for s in items], "total": total}


@router.get("/{sweep_id}", response_model=SweepRead, responses=error_responses(404, 422))
def read_sweep(*, sweep_id: SweepId, session: SessionDep) -> dict:
    return sweep_read(session, _get_or_404(session, sweep_id))


@router.post("/{sweep_id}/cancel", response_model=SweepRead, responses=error_responses(404, 422))
def cancel_sweep(*, sweep_id: SweepId, caller: CallerDep, session: SessionDep) -> dict:
    """No more trials; queued runs end, running ones stop within a step or two (its owner
    or an admin)."""
    authorize_change(caller, _get_or_404(session, sweep_id).owner, f"sweep {sweep_id}", "cancel")
    audit.record(session=session, actor=caller.name, action="sweep.cancel",
                 target=f"sweep {sweep_id}")  # fmt: skip
    sweep = sweeps.cancel(session=session, sweep_id=sweep_id)
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found")
    return sweep_read(session, sweep)


@router.delete(
    "/{sweep_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409, 422, e409="the sweep or one of its runs is still going"),
)
def delete_sweep(
    *, sweep_id: SweepId, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Remove a sweep that has ended (finished or cancelled): its trials, its runs, their
    rows and their files (its owner or an admin). A sweep's runs are deleted only with it."""
    sweep = _get_or_404(session, sweep_id)
    authorize_change(caller, sweep.owner, f"sweep {sweep_id}", "delete")
    audit.record(session=session, actor=caller.name, action="sweep.delete",
                 target=f"sweep {sweep_id}", detail={"name": sweep.name})  # fmt: skip
    runs = sweeps.delete(session=session, sweep_id=sweep_id)
    if runs is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"sweep {sweep_id} is running or has runs queued or running; cancel it and wait "
            "for its runs to end before deleting it",
        )
    for experiment_id, run_key in runs:
        artifacts.remove_run(settings, run_key)
        live.forget(experiment_id, settings)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _get_or_404(session: Session, sweep_id: int) -> Sweep:
    sweep = sweeps.get_sweep(session=session, sweep_id=sweep_id)
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found")
    return sweep
