"""Studies: the spec's main() as a service call, a dense baseline plus experiments."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse

from api import conditional, live
from api.auth import CallerDep, MemberDep, authorize_change
from api.deps import QueueDep, SessionDep, SettingsDep
from api.downloads import file_response
from api.errors import error_responses
from api.params import IdempotencyKey, Offset, OwnerQuery, StudyId, owner_named
from api.plan import plan
from api.quota import check_queue_room
from api.requests import StudyCreate
from api.resolve import resolve_study
from api.schemas import ArtifactList, StudyList, StudyPlan, StudyRead
from api.study_report import study_read, study_results, study_summary
from api.submit import request_hash, store_once, submit
from store import artifacts, audit, catalogue
from store.models import Experiment, Status, Study

router = APIRouter(prefix="/studies", tags=["studies"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyRead,
    responses={
        200: {
            "model": StudyRead | StudyPlan,
            "description": "the study an earlier request with this Idempotency-Key stored; "
            "or, with dry_run=true, the runs it would queue (StudyPlan)",
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
def create_study(
    *,
    body: StudyCreate,
    caller: MemberDep,
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    response: Response,
    dry_run: Annotated[
        bool,
        Query(description="check and size the runs, store and queue nothing: 200 with a plan"),
    ] = False,
    idempotency_key: IdempotencyKey = None,
) -> dict | Response:
    runs = resolve_study(body, settings=settings)
    base = runs[0].base  # the first seed's: the study's base
    if dry_run:
        # each seed's runs differ only in their seed: one plan per preset (and dense)
        first_seed = [run for run in runs if run.seed == base.seed]
        answer = StudyPlan(
            runs=[plan(run.config, run.base, dense=run.dense) for run in first_seed],
            seeds=sorted({run.seed for run in runs}),
        )
        return JSONResponse(answer.model_dump(mode="json"))
    digest = request_hash(body)
    experiments = []

    def add() -> Study:
        check_queue_room(session=session, settings=settings, caller=caller, adding=len(runs))
        study = catalogue.create_study(
            session=session,
            name=body.name,
            base=base,
            base_preset=body.base_preset,
            presets=list(body.experiments),
            seeds=body.seeds,
            idempotency_key=idempotency_key,
            request_hash=digest,
            owner=caller.name,
        )
        audit.record(session=session, actor=caller.name, action="study.create",
                     target=f"study {study.id}",
                     detail={"name": body.name, "runs": len(runs)})  # fmt: skip
        dense_of: dict[int, int] = {}  # seed -> its dense run, each seed's first
        for run in runs:
            member = catalogue.create_experiment(
                session=session, name=run.name, config=run.config, base=run.base,
                base_preset=body.base_preset, study=study, dense=run.dense,
                preset=run.preset, baseline_id=dense_of.get(run.seed), owner=caller.name,
            )  # fmt: skip
            if run.dense:
                dense_of[run.seed] = member.id
            experiments.append(member)
        return study

    study, new = store_once(
        session=session, model=Study, idempotency_key=idempotency_key, digest=digest, add=add,
        owner=caller.name,
    )  # fmt: skip
    if new:
        # Each seed's dense run first: with one worker, a baseline is known before its runs.
        submit(session=session, queue=queue, experiments=experiments, study=study)
    else:
        response.status_code = status.HTTP_200_OK  # a replay: the original, stored once
    response.headers["Location"] = f"/studies/{study.id}"
    return study_read(_get_or_404(session, study.id))


@router.get(
    "",
    response_model=StudyList,
    responses=error_responses(422),
)
def list_studies(
    *,
    session: SessionDep,
    caller: CallerDep,
    owner: OwnerQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> dict:
    items, total = catalogue.list_studies(session=session, limit=limit, offset=offset,
                                          owner=owner_named(owner, caller))  # fmt: skip
    return {"items": [study_summary(study) for study in items], "total": total}


@router.get(
    "/{study_id}",
    response_model=StudyRead,
    responses={**conditional.NOT_MODIFIED, **error_responses(404, 422)},
)
def read_study(*, study_id: StudyId, request: Request, session: SessionDep) -> Response:
    # the dashboard's study page polls this: a 304 while no member moved
    return conditional.answer_model(request, StudyRead, study_read(_get_or_404(session, study_id)))


@router.delete(
    "/{study_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 409, 422, e409="a member is queued or running"),
)
def delete_study(
    *, study_id: StudyId, caller: CallerDep, session: SessionDep, settings: SettingsDep
) -> Response:
    """Remove a finished study: its runs, their rows and their files (its owner or an
    admin)."""
    study = _get_or_404(session, study_id)
    authorize_change(caller, study.owner, f"study {study_id}", "delete")
    members = [(member.id, member.run_key) for member in study.members]
    audit.record(session=session, actor=caller.name, action="study.delete",
                 target=f"study {study_id}", detail={"name": study.name})  # fmt: skip
    if not catalogue.delete_study(session=session, study_id=study_id):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"study {study_id} has runs queued or running; cancel them before deleting it",
        )
    for experiment_id, run_key in members:
        artifacts.remove_run(settings, run_key)
        live.forget(experiment_id, settings)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


StudyFile = Literal["dense_model.pt", "experiment_results.json"]


@router.get(
    "/{study_id}/artifacts", response_model=ArtifactList, responses=error_responses(404, 422)
)
def list_study_artifacts(*, study_id: StudyId, session: SessionDep, settings: SettingsDep) -> dict:
    """As the spec's main() leaves them: dense_model.pt (the first seed's dense weights)
    and experiment_results.json (every run's result and the verdicts, from the store)."""
    study = _get_or_404(session, study_id)
    items = []
    dense = _dense_run(study)
    if dense is not None:
        items += [{**item, "name": "dense_model.pt"} for item in artifacts.run_listing(
            settings, dense.run_key, (artifacts.MODEL,))]  # fmt: skip
    items.append({"name": "experiment_results.json", "size": len(_results_json(study)),
                  "modified_at": max(m.finished_at or m.created_at for m in study.members)})  # fmt: skip
    return {"items": items}


@router.get(
    "/{study_id}/artifacts/{name}",
    response_class=Response,
    responses={
        200: {
            "description": "the file",
            "content": {"application/octet-stream": {}, "application/json": {}},
        },
        **error_responses(404, 422),
    },
)
def download_study_artifact(
    *,
    study_id: StudyId,
    name: Annotated[StudyFile, Path(description="one of the listed names")],
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    study = _get_or_404(session, study_id)
    filename = f"study-{study_id}-{name}"
    if name == "experiment_results.json":
        return Response(
            _results_json(study),
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    dense = _dense_run(study)
    try:
        if dense is None:
            raise FileNotFoundError
        file = artifacts.open_run_file(settings, dense.run_key, artifacts.MODEL)
    except FileNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"study {study_id}'s dense run has no weights (yet)"
        ) from None
    return file_response(file, filename=filename, media_type="application/octet-stream")


def _dense_run(study: Study) -> Experiment | None:
    """The first seed's dense run, once it has succeeded: its model.pt is final then."""
    dense = next((member for member in study.members if member.dense), None)
    return dense if dense is not None and dense.status == Status.succeeded else None


def _results_json(study: Study) -> bytes:
    return json.dumps(study_results(study), indent=2, default=str).encode()


def _get_or_404(session: SessionDep, study_id: int) -> Study:
    study = catalogue.get_study(session=session, study_id=study_id)
    if study is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"study {study_id} not found")
    return study
