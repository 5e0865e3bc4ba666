"""A study's aggregate status and verdict table, derived from its member runs."""

from __future__ import annotations

from typing import Any

from api.verdicts import NoVerdict, verdict
from store.models import FINISHED, Experiment, Status, Study


def study_status(members: list[Experiment]) -> Status:
    """running while any member is queued or running (queued if none started yet);
    then succeeded if all did, else failed if any did, else cancelled."""
    statuses = {Status(member.status) for member in members}
    if not statuses <= FINISHED:
        return Status.queued if statuses == {Status.queued} else Status.running
    if statuses == {Status.succeeded}:
        return Status.succeeded
    return Status.failed if Status.failed in statuses else Status.cancelled


def study_summary(study: Study) -> dict[str, Any]:
    dense = _dense(study)
    return {
        "id": study.id,
        "name": study.name,
        "status": study_status(study.members),
        "dense_id": dense.id,
        "member_ids": [member.id for member in study.members],
        "created_at": study.created_at,
    }


def study_read(study: Study) -> dict[str, Any]:
    dense = _dense(study)
    rows = []
    for member in study.members:
        if member.dense:
            continue
        try:
            judged: dict[str, Any] | None = verdict(member, dense)
            detail = None
        except NoVerdict as exc:
            judged, detail = None, str(exc)
        rows.append(
            {
                "experiment_id": member.id,
                "name": member.name,
                "status": member.status,
                "passed": judged["passed"] if judged else None,
                "primary_passed": judged["primary"]["passed"] if judged else None,
                "tertiary_passed": judged["tertiary"]["passed"] if judged else None,
                "verdict": judged,
                "detail": detail,
            }
        )
    return {
        "id": study.id,
        "name": study.name,
        "base_preset": study.base_preset,
        "base": study.base,
        "experiments": study.experiment_presets,
        "status": study_status(study.members),
        "dense_id": dense.id,
        "members": study.members,
        "verdicts": rows,
        "created_at": study.created_at,
    }


def _dense(study: Study) -> Experiment:
    return next(member for member in study.members if member.dense)
