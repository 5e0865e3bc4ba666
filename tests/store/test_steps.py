"""A run's step points in the store (store.steps), written through the lease: idempotent,
fenced on the owner, deleted with the run; on Postgres and SQLite."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select

from store import catalogue, leases, steps
from store.db import session_scope
from store.leases import ClaimOutcome
from store.models import Status, StepMetrics
from tests.factories import claim, step_point, write_steps

pytestmark = pytest.mark.services  # real Postgres (see tests/fixtures/services.py)


def read(database: str, experiment_id: int, after_step: int | None = None) -> list[dict]:
    with session_scope(database) as session:
        return steps.step_points(session=session, experiment_id=experiment_id,
                                 after_step=after_step)  # fmt: skip


def test_replayed_steps_overwrite_their_points(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    write_steps(database, experiment_id, "a", [step_point(s) for s in (2, 4, 6)], every=2)
    # resumed from a checkpoint at step 2: steps 4 and 6 again, then on
    write_steps(database, experiment_id, "a", [step_point(s, loss=4.0) for s in (4, 6, 8)], every=2)
    points = read(database, experiment_id)
    assert [p["step"] for p in points] == [2, 4, 6, 8]
    assert [p["loss"] for p in points] == [5.0, 4.0, 4.0, 4.0]
    assert points[0] == step_point(2)  # the point as the Trainer gave it, key for key
    assert [p["step"] for p in read(database, experiment_id, after_step=4)] == [6, 8]
    with session_scope(database) as session:
        assert steps.last_step(session=session, experiment_id=experiment_id) == 8
        assert steps.every(session=session, experiment_id=experiment_id) == 2


def test_a_stale_owner_writes_no_point_and_nonfinite_figures_are_null(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    with pytest.raises(leases.LostOwnership):
        write_steps(database, experiment_id, "b", [step_point(1)])
    assert read(database, experiment_id) == []
    diverged = {**step_point(1), "loss": math.nan, "grad_norm": math.inf}
    write_steps(database, experiment_id, "a", [diverged])
    (point,) = read(database, experiment_id)
    assert point["loss"] is None and point["grad_norm"] is None and point["ce_loss"] == 4.99


def test_deleting_a_run_deletes_its_points(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    write_steps(database, experiment_id, "a", [step_point(s) for s in (1, 2)])
    with session_scope(database) as session:
        assert leases.finish_experiment(session=session, experiment_id=experiment_id, owner="a",
                                        status=Status.cancelled)  # fmt: skip
        assert catalogue.delete_experiment(session=session, experiment_id=experiment_id)
    with session_scope(database) as session:
        left = session.scalar(
            select(func.count()).where(StepMetrics.experiment_id == experiment_id)
        )
    assert left == 0
