"""A run's lease in the store (store.leases): fenced claims and takeovers, the restart
cap, handbacks, and the sweeps' queries, on Postgres and SQLite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from store import catalogue, leases, workers
from store.db import session_scope
from store.leases import ClaimOutcome, LeaseState
from store.models import Experiment, Status, Worker, utcnow
from tests.factories import (
    claim,
    counts,
    new_experiment,
    record,
    run_row,
    write,
)

pytestmark = pytest.mark.services  # real Postgres (see tests/fixtures/services.py)


def lease(database: str, experiment_id: int, owner: str) -> LeaseState:
    with session_scope(database) as session:
        return leases.lease_state(session=session, experiment_id=experiment_id, owner=owner)


def test_a_run_has_one_owner_until_its_heartbeat_stops(database, experiment_id):
    first = claim(database, experiment_id, "a")
    assert (first.outcome, first.attempt) == (ClaimOutcome.claimed, 1)
    assert claim(database, experiment_id, "b").outcome is ClaimOutcome.held  # "a" is alive
    write(database, experiment_id, "a", record(1, 5.0))

    second = claim(database, experiment_id, "b", stale_after=-1)  # "a" went silent
    assert (second.outcome, second.attempt) == (ClaimOutcome.took_over, 2)
    with pytest.raises(leases.LostOwnership):
        write(database, experiment_id, "a", record(2, 4.0))
    assert lease(database, experiment_id, "a") is LeaseState.lost
    assert lease(database, experiment_id, "b") is LeaseState.held
    with session_scope(database) as session:
        assert not leases.heartbeat(session=session, experiment_id=experiment_id, owner="a")
        assert not leases.hand_back(session=session, experiment_id=experiment_id, owner="a")
        assert not leases.finish_experiment(
            session=session, experiment_id=experiment_id, owner="a", status=Status.failed
        )
        assert leases.finish_experiment(
            session=session, experiment_id=experiment_id, owner="b", status=Status.succeeded,
            result={"metrics": {"best_val_loss": float("inf"), "stopped_early": True}, "params": 7},
        )  # fmt: skip
    run = run_row(database, experiment_id)
    assert (run.status, run.attempts, run.restarts, run.params, run.stopped_early) == (
        "succeeded", 2, 1, 7, True,
    )  # fmt: skip
    assert run.metrics["best_val_loss"] is None  # no Infinity in JSON
    assert counts(database, experiment_id) == (1, 4)
    finished = claim(database, experiment_id, "c", stale_after=-1)
    assert finished.outcome is ClaimOutcome.finished


def test_a_dead_owner_process_is_taken_over_at_once(database, experiment_id):
    """A pool process killed (OOM): its heartbeat is still fresh, but its worker knows."""
    assert claim(database, experiment_id, "host:1:a").outcome is ClaimOutcome.claimed
    assert claim(database, experiment_id, "host:2:b").outcome is ClaimOutcome.held
    took = claim(database, experiment_id, "host:2:b", dead=("host:1:a",))
    assert took.outcome is ClaimOutcome.took_over
    assert run_row(database, experiment_id).restarts == 1


def test_past_max_restarts_a_run_fails_saying_why(database, experiment_id):
    owners = [f"w{i}" for i in range(4)]
    assert claim(database, experiment_id, owners[0], max_restarts=2).outcome is ClaimOutcome.claimed
    for owner in owners[1:3]:  # two deaths: two takeovers
        outcome = claim(database, experiment_id, owner, stale_after=-1, max_restarts=2).outcome
        assert outcome is ClaimOutcome.took_over
    gave_up = claim(database, experiment_id, owners[3], stale_after=-1, max_restarts=2)
    assert gave_up.outcome is ClaimOutcome.gave_up
    run = run_row(database, experiment_id)
    assert run.status == "failed" and run.attempts == 3
    assert "MOE_MAX_RESTARTS=2" in run.error and "died 3 times" in run.error
    assert claim(database, experiment_id, "w9", stale_after=-1).outcome is ClaimOutcome.finished


def test_a_handed_back_run_is_queued_again_without_counting_a_restart(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    write(database, experiment_id, "a", record(1, 5.0))
    with session_scope(database) as session:
        assert leases.hand_back(session=session, experiment_id=experiment_id, owner="a")
    run = run_row(database, experiment_id)
    assert (run.status, run.worker, run.handbacks, run.restarts) == ("queued", None, 1, 0)
    assert lease(database, experiment_id, "a") is LeaseState.lost
    again = claim(database, experiment_id, "b")
    assert (again.outcome, again.attempt) == (ClaimOutcome.claimed, 2)
    assert run_row(database, experiment_id).restarts == 0


def test_a_cancelled_queued_run_is_never_claimed(database, experiment_id):
    with session_scope(database) as session:
        catalogue.request_cancel(
            session=session, experiment_id=experiment_id, stale_before=utcnow()
        )
    assert claim(database, experiment_id, "a", stale_after=-1).outcome is ClaimOutcome.finished


def test_cancelling_a_live_run_flags_it_for_its_worker(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    with session_scope(database) as session:
        catalogue.request_cancel(
            session=session, experiment_id=experiment_id, stale_before=utcnow() - timedelta(60)
        )
    run = run_row(database, experiment_id)
    assert (run.status, run.cancel_requested) == ("running", True)
    assert lease(database, experiment_id, "a") is LeaseState.cancel_requested


def test_the_sweep_requeues_silent_runs_once_and_fences_their_old_owner(own_database):
    live, dead = new_experiment(own_database), new_experiment(own_database)
    assert claim(own_database, live, "alive").outcome is ClaimOutcome.claimed
    assert claim(own_database, dead, "silent").outcome is ClaimOutcome.claimed
    with session_scope(own_database) as session:
        session.execute(update(Experiment).where(Experiment.id == dead)
                        .values(heartbeat_at=utcnow() - timedelta(seconds=120)))  # fmt: skip
        session.commit()

    def sweep() -> list[int]:
        with session_scope(own_database) as session:
            return leases.requeue_abandoned(
                session=session, stale_before=leases.stale_cutoff(60), max_restarts=5
            )

    assert sweep() == [dead]
    assert sweep() == []  # only one sweep acts on a run
    run = run_row(own_database, dead)
    assert (run.status, run.worker, run.restarts) == ("queued", None, 1)
    with pytest.raises(leases.LostOwnership):  # the silent owner comes back: too late
        write(own_database, dead, "silent", record(1, 5.0))
    assert run_row(own_database, live).status == "running"
    assert claim(own_database, dead, "rescuer").outcome is ClaimOutcome.claimed


def test_the_sweep_fails_a_run_past_max_restarts_and_cancels_a_cancelled_one(own_database):
    doomed, cancelled = new_experiment(own_database), new_experiment(own_database)
    for experiment_id in (doomed, cancelled):
        assert claim(own_database, experiment_id, "x").outcome is ClaimOutcome.claimed
    with session_scope(own_database) as session:
        session.execute(update(Experiment).where(Experiment.id == doomed).values(restarts=3))
        session.execute(update(Experiment).where(Experiment.id == cancelled)
                        .values(cancel_requested=True))  # fmt: skip
        session.execute(update(Experiment).values(heartbeat_at=utcnow() - timedelta(hours=1)))
        session.commit()
        assert (
            leases.requeue_abandoned(
                session=session, stale_before=leases.stale_cutoff(60), max_restarts=3
            )
            == []
        )
    assert run_row(own_database, doomed).status == "failed"
    assert "MOE_MAX_RESTARTS=3" in run_row(own_database, doomed).error
    assert run_row(own_database, cancelled).status == "cancelled"


def test_a_workers_dead_processes_runs_are_requeued_by_name(own_database):
    mine, other = new_experiment(own_database), new_experiment(own_database)
    assert claim(own_database, mine, "h:1:a", worker_name="w1@h").outcome is ClaimOutcome.claimed
    assert claim(own_database, other, "h:2:b", worker_name="w2@h").outcome is ClaimOutcome.claimed
    with session_scope(own_database) as session:
        requeued = leases.requeue_abandoned(
            session=session, stale_before=leases.stale_cutoff(60), max_restarts=5,
            worker_name="w1@h", owner_is_dead=lambda owner: True,
        )  # fmt: skip
    assert requeued == [mine]
    assert run_row(own_database, other).status == "running"


def test_a_queued_run_is_republished_only_beside_a_worker_idle_for_the_grace(own_database):
    waiting = new_experiment(own_database)
    now = utcnow()

    def due(at) -> list[int]:
        with session_scope(own_database) as session:
            return leases.republish_due(session=session, now=at, grace=60)

    assert due(now + timedelta(seconds=120)) == []  # no worker at all: nobody to take it
    with session_scope(own_database) as session:
        workers.register(session=session, name="w@h", host="h", pid=1, device="cpu")
        session.execute(update(Worker).values(idle_since=now - timedelta(seconds=30)))
        session.commit()
    assert due(now + timedelta(seconds=10)) == []  # idle for 40 s only
    later = now + timedelta(seconds=45)
    with session_scope(own_database) as session:  # a live heartbeat at `later`
        session.execute(update(Worker).values(heartbeat_at=later))
        session.commit()
    assert due(later) == []  # the run has waited 45 s: not long enough yet
    much_later = now + timedelta(seconds=100)
    with session_scope(own_database) as session:
        session.execute(update(Worker).values(heartbeat_at=much_later))
        session.commit()
    assert due(much_later) == [waiting]
    assert due(much_later) == []  # marked: one publish per grace period
    assert run_row(own_database, waiting).queued_at == much_later
