"""A run's system points in the store (store.system_points): written fenced on the owner,
idempotent, bounded per run, deleted with the run; on Postgres and SQLite."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select

from store import catalogue, leases, system_points
from store.db import session_scope
from store.leases import ClaimOutcome
from store.models import Status, SystemPoint
from tests.factories import claim, system_reading, write_system

pytestmark = pytest.mark.services  # real Postgres (see tests/fixtures/services.py)


def read(database: str, experiment_id: int) -> list[dict]:
    with session_scope(database) as session:
        return list(system_points.system_points(session=session, experiment_id=experiment_id))


def test_a_write_tried_again_lands_once_and_a_restart_appends(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    first = [system_reading(s) for s in (5, 10)]
    assert not write_system(database, experiment_id, "a", first)
    # the same readings again (the commit's answer was lost), and the next one
    write_system(database, experiment_id, "a", [*first, system_reading(15, cpu=180.0)])
    # another attempt of the run reads later times: they follow
    with session_scope(database) as session:
        leases.hand_back(session=session, experiment_id=experiment_id, owner="a")
    claim(database, experiment_id, "b")
    write_system(database, experiment_id, "b", [system_reading(40)])
    points = read(database, experiment_id)
    assert [p["elapsed_s"] for p in points] == [5.0, 10.0, 15.0, 40.0]
    assert points[0] == system_reading(5)  # key for key, its time still UTC
    assert points[2]["cpu_percent"] == 180.0


def test_a_stale_owner_writes_nothing_and_nonfinite_figures_are_null(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    with pytest.raises(leases.LostOwnership):
        write_system(database, experiment_id, "b", [system_reading(1)])
    assert read(database, experiment_id) == []
    write_system(database, experiment_id, "a", [{**system_reading(1), "cpu_percent": math.nan}])
    (point,) = read(database, experiment_id)
    assert point["cpu_percent"] is None and point["rss_mb"] == 512.0


def test_past_the_cap_every_other_point_goes_the_first_and_last_kept(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    assert not write_system(database, experiment_id, "a",
                            [system_reading(s) for s in range(10)], max_points=10)  # fmt: skip
    assert write_system(database, experiment_id, "a", [system_reading(10)], max_points=10)
    assert [p["elapsed_s"] for p in read(database, experiment_id)] == [0, 2, 4, 6, 8, 10]
    # and so on: never more than the cap, the whole run's span kept
    for second in range(12, 40, 2):
        write_system(database, experiment_id, "a", [system_reading(second)], max_points=10)
        assert len(read(database, experiment_id)) <= 10
    kept = [p["elapsed_s"] for p in read(database, experiment_id)]
    assert kept[0] == 0 and kept[-1] == 38


def test_deleting_a_run_deletes_its_points(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    write_system(database, experiment_id, "a", [system_reading(s) for s in (1, 2)])
    with session_scope(database) as session:
        assert leases.finish_experiment(session=session, experiment_id=experiment_id, owner="a",
                                        status=Status.cancelled)  # fmt: skip
        assert catalogue.delete_experiment(session=session, experiment_id=experiment_id)
    with session_scope(database) as session:
        left = session.scalar(
            select(func.count()).where(SystemPoint.experiment_id == experiment_id)
        )
    assert left == 0
