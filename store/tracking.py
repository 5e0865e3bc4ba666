"""What the worker's optional sinks (worker.sinks: TensorBoard, MLflow) keep in the store:
the MLflow run that mirrors a run, and the sinks' failures, which /metrics counts."""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from moe_core.verdict_records import ServedVerdict
from store.db import rowcount
from store.models import Experiment, SinkFailure, Status
from store.verdicts import served_verdict

SINKS = ("tensorboard", "mlflow")  # the names /metrics labels, each reported even at 0


def set_mlflow_run_id(*, session: Session, experiment_id: int, owner: str, run_id: str) -> bool:
    """Remember the MLflow run of a run `owner` still holds (committed); fenced like every
    write of a worker, so a stale attempt cannot point the run at its own MLflow run."""
    done = rowcount(session.execute(
        update(Experiment)
        .where(
            Experiment.id == experiment_id,
            Experiment.worker == owner,
            Experiment.status == Status.running,
        )
        .values(mlflow_run_id=run_id)
    ))  # fmt: skip
    session.commit()
    return done == 1


def record_sink_failure(*, session: Session, experiment_id: int, sink: str, error: str) -> None:
    """Count one sink's failure during an attempt (committed). Not fenced: a count of what
    happened, whichever attempt it happened in."""
    session.add(SinkFailure(experiment_id=experiment_id, sink=sink, error=error[:2000]))
    session.commit()


def sink_failures(*, session: Session) -> dict[str, int]:
    """Failures per sink, every known sink present."""
    counts = dict(
        session.execute(select(SinkFailure.sink, func.count()).group_by(SinkFailure.sink)).all()
    )
    return {sink: int(counts.get(sink, 0)) for sink in sorted({*SINKS, *counts})}


def run_verdict(*, session: Session, run: Experiment) -> ServedVerdict | None:
    """A succeeded run's verdict against its dense baseline, as GET /experiments/{id}/verdict
    judges it, when the baseline has succeeded too; None when there is none to give yet (a
    dense run, no baseline, a baseline not finished or failed)."""
    if run.dense or run.baseline_id is None:
        return None
    baseline = session.get(Experiment, run.baseline_id)
    if baseline is None or baseline.status != Status.succeeded:
        return None
    try:
        return served_verdict(run, baseline)
    except ValueError:  # e.g. a baseline without a finite validation loss
        return None


def verdicts_left_waiting(
    *, session: Session, dense: Experiment
) -> list[tuple[str, ServedVerdict]]:
    """(MLflow run id, verdict) of each succeeded run judged against `dense` that ended
    before it did: when those ended there was no verdict to mirror, and now there is. A
    run that ended after `dense` mirrored its own verdict as it ended."""
    if not dense.dense or dense.status != Status.succeeded or dense.finished_at is None:
        return []
    waiting = session.scalars(
        select(Experiment)
        .where(
            Experiment.baseline_id == dense.id,
            Experiment.status == Status.succeeded,
            Experiment.mlflow_run_id.is_not(None),
            Experiment.finished_at <= dense.finished_at,
        )
        .order_by(Experiment.id)
    )
    found: list[tuple[str, ServedVerdict]] = []
    for run in waiting:
        verdict = run_verdict(session=session, run=run)
        if verdict is not None and run.mlflow_run_id is not None:  # the query's own filter
            found.append((run.mlflow_run_id, verdict))
    return found
