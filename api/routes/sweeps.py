"""Sweeps: a design space searched as one call, each trial a set of runs (one per seed)
judged against the sweep's dense run of the same seed (store.sweeps, moe_core.search)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import rules
from api.deps import QueueDep, SessionDep
from api.errors import error_responses
from api.resolve import MAX_ID, ConfigRefused
from moe_core.search import MAX_RUNS, SweepConfig, check_sweep, grid_points, rank
from store import catalogue, sweeps
from store.models import Experiment, Sweep

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
SweepId = Annotated[int, Path(ge=1, le=MAX_ID)]


class SweepCreate(SweepConfig):
    __doc__ = (
        "A sweep (moe_core.search.SweepConfig: docs/sweeps.md) and how many of its trials "
        "train at once. "
        + rules.stated(
            rules.SWEEP_CONSISTENT,
            rules.SWEEP_TOO_LARGE,
            rules.SWEEP_POINT_REFUSED,
            rules.TEXT_NOT_STORABLE,
            rules.NUMBER_NOT_FINITE,
        )  # fmt: skip
    )
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "capacity",
                    "base_preset": "micro",
                    "space": {"capacity_factor": {"choices": [1.0, 2.0]}},
                    "method": "grid",
                    "seeds": 1,
                    "parallel": 2,
                }
            ]
        },
    )

    parallel: int = Field(2, ge=1, le=64, description="trials training at once")


class TrialRead(BaseModel):
    number: int
    params: dict[str, Any]
    state: Literal["running", "complete", "pruned", "failed", "tertiary_failed", "cancelled"]
    objective: dict[str, Any] | None = Field(
        description="over the seeds: name, mean, se, ci_low, ci_high, p_value, significant"
    )
    passed: bool | None = Field(description="the spec's verdict over the seeds (null: none)")
    pruned_at_epoch: int | None
    run_ids: list[int]
    finished_at: datetime | None


class SweepRead(BaseModel):
    id: int
    name: str
    status: Literal["running", "finished", "cancelled"]
    parallel: int
    config: dict[str, Any]
    fields: list[str] = Field(description="the space's fields, in the order submitted")
    dense_run_ids: list[int]
    trials: list[TrialRead] = Field(description="in the order proposed")
    ranking: list[int] = Field(description="trial numbers that can be best, best first")
    best_trial: int | None
    importance: dict[str, float] | None = Field(description="fANOVA share of each field")
    created_at: datetime
    finished_at: datetime | None


class SweepPlan(BaseModel):
    trials: int = Field(description="the budget: trials the sweep runs at most")
    runs: int = Field(description="trials x seeds + one dense run per seed")
    max_runs: int
    grid_points: int | None


class SweepList(BaseModel):
    items: list[SweepRead]
    total: int


def sweep_read(session, sweep: Sweep) -> dict[str, Any]:
    runs = list(session.query(Experiment.id, Experiment.trial_number)
                .filter(Experiment.sweep_id == sweep.id).order_by(Experiment.id))  # fmt: skip
    order = {name: i for i, name in enumerate(sweep.fields)}
    trials = [{
        "number": t.number, "params": dict(sorted(t.params.items(), key=lambda kv: order.get(kv[0], len(order)))), "state": t.state, "objective": t.objective,
        "passed": (t.verdict or {}).get("passed"), "pruned_at_epoch": t.pruned_at_epoch,
        "run_ids": [i for i, n in runs if n == t.number], "finished_at": t.finished_at,
    } for t in sweep.trials]  # fmt: skip
    return {
        "id": sweep.id, "name": sweep.name, "status": sweep.status, "parallel": sweep.parallel,
        "config": sweep.config, "fields": sweep.fields,
        "dense_run_ids": [i for i, n in runs if n is None],
        "trials": trials, "ranking": rank(trials), "best_trial": sweep.best_trial,
        "importance": sweep.importance, "created_at": sweep.created_at,
        "finished_at": sweep.finished_at,
    }  # fmt: skip


def _refuse(problems: list[str]) -> ConfigRefused:
    return ConfigRefused([
        {"type": "too_many_runs" if " runs (" in p else "sweep_point_refused",
         "loc": ("body", "space"), "msg": p, "input": None}
        for p in problems
    ])  # fmt: skip


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepRead,
    responses={
        200: {"model": SweepPlan, "description": "with dry_run=true: what the sweep would run"},
        **error_responses(
            400, 413, 422, 503, e503="the task broker is unreachable; nothing was stored"
        ),
    },
)
def create_sweep(
    *,
    body: SweepCreate,
    session: SessionDep,
    queue: QueueDep,
    response: Response,
    dry_run: Annotated[bool, Query(description="check and size it; store nothing")] = False,
) -> dict | Response:
    """Check the sweep whole (every grid point, or each choice and each range's ends,
    against the base; its size against the limit), then store it with a dense run per seed
    and its first `parallel` trials, and queue them. Workers propose the next trials as
    earlier ones end."""
    config = SweepConfig.model_validate(body.model_dump(exclude={"parallel"}))
    problems = check_sweep(config)
    if problems:
        raise _refuse(problems)
    if dry_run:
        grid = len(grid_points(config.space)) if config.method == "grid" else None
        plan = SweepPlan(
            trials=config.budget(), runs=config.runs(), max_runs=MAX_RUNS, grid_points=grid
        )
        return JSONResponse(plan.model_dump(mode="json"))
    sweep, runs = sweeps.create_sweep(session=session, config=config, base=config.base_config(),
                                      parallel=body.parallel)  # fmt: skip
    session.commit()
    ids = [run.id for run in runs]
    try:
        queue.enqueue(ids)
    except Exception as exc:  # kombu raises transport-specific errors
        session.delete(sweep)  # its runs and trials with it
        session.commit()
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"the task broker is unreachable, nothing was stored: {exc}",
                            headers={"Retry-After": "5"}) from exc  # fmt: skip
    catalogue.mark_published(session=session, experiment_ids=ids)
    response.headers["Location"] = f"/sweeps/{sweep.id}"
    return sweep_read(session, sweep)


@router.get("", response_model=SweepList, responses=error_responses(422))
def list_sweeps(
    *, session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> dict:  # fmt: skip
    total = session.query(Sweep).count()
    items = session.query(Sweep).order_by(Sweep.id.desc()).limit(limit).offset(offset).all()
    return {"items": [sweep_read(session, s) for s in items], "total": total}


@router.get("/{sweep_id}", response_model=SweepRead, responses=error_responses(404, 422))
def read_sweep(*, sweep_id: SweepId, session: SessionDep) -> dict:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found")
    return sweep_read(session, sweep)


@router.post("/{sweep_id}/cancel", response_model=SweepRead, responses=error_responses(404, 422))
def cancel_sweep(*, sweep_id: SweepId, session: SessionDep) -> dict:
    """No more trials; queued runs end, running ones stop within a step or two."""
    sweep = sweeps.cancel(session=session, sweep_id=sweep_id)
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {sweep_id} not found")
    return sweep_read(session, sweep)
