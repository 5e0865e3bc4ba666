"""A run's files: its log (read from an offset, to follow it), its artifacts (the final
model, the checkpoint, the result, the log) and its TensorBoard event files, listed and
downloaded. Each file is opened by store.artifacts, which serves only the plain files the
worker wrote, and streamed by api.downloads from the descriptor that was checked."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status

from api.deps import SessionDep, SettingsDep
from api.downloads import file_response
from api.errors import error_responses
from api.params import ExperimentId, Offset
from api.routes.experiments import _get_or_404
from api.schemas import ArtifactList
from store import artifacts
from store.models import Experiment, Status

# The same prefix and tag as the experiments' own routes: the paths and the schema's
# grouping are the API's, whichever module serves them.
router = APIRouter(prefix="/experiments", tags=["experiments"])


@router.get(
    "/{experiment_id}/logs",
    response_class=Response,
    responses={
        200: {
            "description": "the run's log from byte `offset` on; the X-Log-Offset header is "
            "the offset to ask for next (follow a run by polling with it)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(404, 422),
    },
)
def read_logs(
    *,
    experiment_id: ExperimentId,
    session: SessionDep,
    settings: SettingsDep,
    offset: Offset = 0,
) -> Response:
    """What the worker logged for the run, each attempt: its start, each epoch, warnings and
    the traceback of a failure."""
    experiment = _get_or_404(session, experiment_id)
    try:
        with artifacts.open_run_file(settings, experiment.run_key, artifacts.LOG) as log:
            log.seek(offset)
            text = log.read(MAX_LOG_READ)
        if len(text) == MAX_LOG_READ and b"\n" in text:
            # End on a whole line: a cut inside a UTF-8 character would show as garbage.
            text = text[: text.rindex(b"\n") + 1]
    except FileNotFoundError:
        text = b""
    return Response(
        text,
        media_type="text/plain; charset=utf-8",
        headers={"X-Log-Offset": str(offset + len(text))},
    )


# The most of a log one request returns: a client follows on with X-Log-Offset.
MAX_LOG_READ = 1 << 20


@router.get(
    "/{experiment_id}/artifacts", response_model=ArtifactList, responses=error_responses(404, 422)
)
def list_artifacts(
    *, experiment_id: ExperimentId, session: SessionDep, settings: SettingsDep
) -> dict:
    """The run's files: model.pt (final weights), checkpoint.pt, result.json, run.log, and
    with MOE_TENSORBOARD on its TensorBoard event files (tensorboard/<file>). Until
    the run has succeeded every one is `partial`: what it had written when it stopped (a
    failed run's checkpoint.pt is its last finished epoch's, not a final model)."""
    experiment = _get_or_404(session, experiment_id)
    partial = _partial(experiment)
    return {
        "items": artifacts.run_listing(settings, experiment.run_key, partial=partial)
        + artifacts.event_file_listing(settings, experiment.run_key, partial=partial)
    }


_PARTIAL_HEADER = {
    "X-Artifact-Partial": {
        "description": "true when the run has not succeeded: the file is what it had "
        "written when it stopped, not its final output",
        "schema": {"type": "string", "enum": ["true", "false"]},
    }
}


@router.get(
    "/{experiment_id}/artifacts/{name}",
    response_class=Response,
    responses={
        200: {
            "description": "the file",
            "content": {"application/octet-stream": {}},
            "headers": _PARTIAL_HEADER,
        },
        **error_responses(
            404,
            409,
            422,
            e409="model.pt or result.json of a run that has not succeeded: not final",
        ),
    },
)
def download_artifact(
    *,
    experiment_id: ExperimentId,
    name: Annotated[artifacts.RunFile, Path(description="one of the listed names")],
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    experiment = _get_or_404(session, experiment_id)
    if name in artifacts.FINAL_FILES and _partial(experiment):
        # Never a run's final model or result unless it is one.
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"experiment {experiment_id} is {experiment.status}: {name} is final only once "
            "the run has succeeded",
        )
    try:
        file = artifacts.open_run_file(settings, experiment.run_key, name)
    except FileNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"experiment {experiment_id} has no {name} (yet)"
        ) from None
    # Named, not guessed: mimetypes takes .pt for an SNES page table.
    media = "application/json" if name.endswith(".json") else "application/octet-stream"
    if name.endswith(".log"):
        media = "text/plain; charset=utf-8"
    return file_response(
        file,
        filename=f"experiment-{experiment_id}-{name}",
        media_type=media,
        headers={"X-Artifact-Partial": str(_partial(experiment)).lower()},
    )


@router.get(
    "/{experiment_id}/artifacts/tensorboard/{filename}",
    response_class=Response,
    responses={
        200: {
            "description": "the event file",
            "content": {"application/octet-stream": {}},
            "headers": _PARTIAL_HEADER,
        },
        **error_responses(404, 422),
    },
)
def download_event_file(
    *,
    experiment_id: ExperimentId,
    filename: Annotated[
        str,
        Path(
            pattern=artifacts.EVENT_FILE.pattern,
            max_length=255,
            description="one of the listed tensorboard/ names, without the folder",
        ),
    ],
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """One of the run's TensorBoard event files (MOE_TENSORBOARD): a run still going has
    written what it had so far (`partial`)."""
    experiment = _get_or_404(session, experiment_id)
    try:
        file = artifacts.open_event_file(settings, experiment.run_key, filename)
    except FileNotFoundError:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"experiment {experiment_id} has no tensorboard/{filename}"
        ) from None
    return file_response(
        file,
        filename=f"experiment-{experiment_id}-{filename}",
        media_type="application/octet-stream",
        headers={"X-Artifact-Partial": str(_partial(experiment)).lower()},
    )


def _partial(experiment: Experiment) -> bool:
    return experiment.status != Status.succeeded
