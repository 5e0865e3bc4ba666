"""Commit new runs, then queue their tasks: a task must never find its row missing."""

from __future__ import annotations

from fastapi import HTTPException, status
from sqlalchemy.orm import Session

from store import runs
from store.models import Experiment
from store.queue import TrainingQueue


def submit(*, session: Session, queue: TrainingQueue, experiments: list[Experiment]) -> None:
    """Commit the session, then enqueue one task per experiment.

    A broker that refuses the tasks leaves the runs failed, with the reason, and answers 503:
    nothing would ever pick them up.
    """
    session.commit()
    ids = [experiment.id for experiment in experiments]
    try:
        queue.enqueue(ids)
    except Exception as exc:  # kombu raises transport-specific errors
        runs.fail_unqueued(session=session, experiment_ids=ids, error=f"not queued: {exc}")
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, f"the task broker is unreachable: {exc}"
        ) from exc
    for experiment in experiments:
        session.refresh(experiment)
