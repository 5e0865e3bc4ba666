"""Studies: the spec's main() as a service call, a dense baseline plus experiments."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import JSONResponse

from api.deps import QueueDep, SessionDep
from api.errors import error_responses
from api.params import Offset, StudyId, only_query
from api.plan import plan
from api.schemas import StudyCreate, StudyList, StudyPlan, StudyRead
from api.specs import (
    check_base_batch_size,
    check_run,
    check_values,
    resolve_base,
    resolve_config,
)
from api.study_report import study_read, study_summary
from api.submit import submit
from store import runs
from store.models import Study

router = APIRouter(prefix="/studies", tags=["studies"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyRead,
    responses={
        200: {"model": StudyPlan, "description": "dry_run=true: the runs it would queue"},
        **error_responses(400, 413, 422),
    },
    # a misspelt ?dryrun=true must not store and queue the run it meant only to check
    dependencies=[only_query("dry_run")],
)
def create_study(
    *,
    body: StudyCreate,
    session: SessionDep,
    queue: QueueDep,
    response: Response,
    dry_run: Annotated[
        bool,
        Query(description="check and size the runs, store and queue nothing: 200 with a plan"),
    ] = False,
) -> dict | Response:
    check_values(body.model_dump(exclude_unset=True))
    base_overrides = body.base.model_dump(exclude_unset=True)
    # a study's MoE runs keep their presets' batch sizes: base.batch_size would not apply
    check_base_batch_size(base_overrides=base_overrides, applies=False)
    base = resolve_base(base_preset=body.base_preset, overrides=base_overrides)
    configs = {
        preset: resolve_config(name=preset, base=base, preset=preset, overrides={})
        for preset in body.experiments
    }
    for config in configs.values():
        check_run(config=config, base=base, dense=False, config_loc=("body", "experiments"))
    dense = resolve_config(name="dense", base=base, dense=True, overrides={})
    check_run(config=dense, base=base, dense=True)
    if dry_run:
        # each seed's runs differ only in their seed: one plan per preset (and dense)
        members = [(dense, True), *((config, False) for config in configs.values())]
        answer = StudyPlan(
            runs=[plan(config, base, dense=is_dense) for config, is_dense in members],
            seeds=list(range(base.seed, base.seed + body.seeds)),
        )
        return JSONResponse(answer.model_dump(mode="json"))
    study = runs.create_study(
        session=session,
        name=body.name,
        base=base,
        base_preset=body.base_preset,
        presets=list(body.experiments),
        seeds=body.seeds,
    )
    experiments = []
    for seed in range(base.seed, base.seed + body.seeds):
        common = {
            "session": session,
            "base": base.model_copy(update={"seed": seed}),
            "base_preset": body.base_preset,
            "study": study,
        }
        dense_run = runs.create_experiment(
            name=_member_name("dense", seed, body.seeds), config=dense, dense=True, **common
        )
        experiments.append(dense_run)
        for preset, config in configs.items():
            name = _member_name(preset, seed, body.seeds)
            experiments.append(
                runs.create_experiment(
                    name=name, config=config, preset=preset, baseline_id=dense_run.id, **common
                )
            )
    # Each seed's dense run first: with one worker, a baseline is known before its runs end.
    submit(session=session, queue=queue, experiments=experiments)
    response.headers["Location"] = f"/studies/{study.id}"
    return study_read(_get_or_404(session, study.id))


@router.get(
    "",
    response_model=StudyList,
    responses=error_responses(422),
    dependencies=[only_query("limit", "offset")],
)
def list_studies(
    *,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> dict:
    items, total = runs.list_studies(session=session, limit=limit, offset=offset)
    return {"items": [study_summary(study) for study in items], "total": total}


@router.get("/{study_id}", response_model=StudyRead, responses=error_responses(404, 422))
def read_study(*, study_id: StudyId, session: SessionDep) -> dict:
    return study_read(_get_or_404(session, study_id))


def _member_name(name: str, seed: int, seeds: int) -> str:
    """One seed keeps the names of old; with several, a name says its seed."""
    return name if seeds == 1 else f"{name} (seed {seed})"


def _get_or_404(session: SessionDep, study_id: int) -> Study:
    study = runs.get_study(session=session, study_id=study_id)
    if study is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"study {study_id} not found")
    return study
