"""The worker registry and the service's statistics (what /workers and /metrics serve)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from store import leases, stats, workers
from store.db import session_scope
from store.models import Experiment, Status, Worker, utcnow
from tests.factories import claim, new_experiment, record, write

pytestmark = pytest.mark.services  # real Postgres (see tests/fixtures/services.py)


def live(database: str, timeout: float = 60) -> list[dict]:
    with session_scope(database) as session:
        return workers.live_workers(session=session, heartbeat_timeout=timeout)


def test_a_worker_is_idle_then_busy_then_idle_again_and_leaves(own_database):
    with session_scope(own_database) as session:
        workers.register(session=session, name="w1@h", host="h", pid=10, device=None)
        workers.register(session=session, name="w2@h", host="h", pid=11, device="cuda:0")
    (first, second) = live(own_database)
    assert (first["name"], first["state"], first["experiment_id"]) == ("w1@h", "idle", None)
    assert first["idle_since"] is not None and second["device"] == "cuda:0"

    experiment_id = new_experiment(own_database)
    claim(own_database, experiment_id, "h:99:x", worker_name="w1@h")
    with session_scope(own_database) as session:
        assert workers.beat(session=session, name="w1@h")
        workers.set_device(session=session, name="w1@h", device="cpu")
    busy = live(own_database)[0]
    assert (busy["state"], busy["experiment_id"], busy["idle_since"], busy["device"]) == (
        "busy", experiment_id, None, "cpu",
    )  # fmt: skip

    with session_scope(own_database) as session:
        leases.finish_experiment(session=session, experiment_id=experiment_id, owner="h:99:x",
                               status=Status.succeeded)  # fmt: skip
        assert workers.beat(session=session, name="w1@h", stopping=True)
    stopping = live(own_database)[0]
    assert stopping["state"] == "stopping" and stopping["idle_since"] is not None

    with session_scope(own_database) as session:
        workers.deregister(session=session, name="w1@h")
        assert not workers.beat(session=session, name="w1@h")  # gone: register again
    assert [w["name"] for w in live(own_database)] == ["w2@h"]


def test_silent_workers_are_not_live_and_are_forgotten_a_day_later(own_database):
    with session_scope(own_database) as session:
        workers.register(session=session, name="old@h", host="h", pid=1, device=None)
        session.execute(update(Worker).values(heartbeat_at=utcnow() - timedelta(minutes=5)))
        session.commit()
    assert live(own_database) == []
    with session_scope(own_database) as session:
        assert workers.prune(session=session, silent_before=utcnow() - timedelta(days=1)) == 0
        assert workers.prune(session=session, silent_before=utcnow()) == 1


def test_service_stats_count_runs_workers_epochs_and_takeovers(own_database):
    queued, running, done = (new_experiment(own_database) for _ in range(3))
    with session_scope(own_database) as session:
        workers.register(session=session, name="w1@h", host="h", pid=1, device=None)
        workers.register(session=session, name="w2@h", host="h", pid=2, device=None)
        session.execute(update(Experiment).where(Experiment.id == queued)
                        .values(queued_at=utcnow() - timedelta(seconds=90)))  # fmt: skip
        session.commit()
    claim(own_database, running, "a", worker_name="w1@h")
    claim(own_database, running, "b", worker_name="w1@h", stale_after=-1)  # a takeover
    write(own_database, running, "b", record(1, 5.0))
    write(own_database, running, "b", {**record(2, 4.0), "duration": 40.0})
    claim(own_database, done, "c")
    with session_scope(own_database) as session:
        leases.hand_back(session=session, experiment_id=done, owner="c")
    claim(own_database, done, "d")
    with session_scope(own_database) as session:
        leases.finish_experiment(session=session, experiment_id=done, owner="d",
                               status=Status.succeeded)  # fmt: skip
        figures = stats.service_stats(session=session, heartbeat_timeout=60)

    assert figures.runs_by_status == {
        "queued": 1, "running": 1, "succeeded": 1, "failed": 0, "cancelled": 0,
    }  # fmt: skip
    assert 85 < figures.oldest_queued_seconds < 300
    assert (figures.live_workers, figures.busy_workers, figures.stopping_workers) == (2, 1, 0)
    assert figures.epochs_finished == 2
    assert (figures.epoch_seconds_count, figures.epoch_seconds_sum) == (2, 40.5)
    bounds = dict(zip(stats.EPOCH_SECONDS_BUCKETS, figures.epoch_seconds_buckets, strict=True))
    assert (bounds[1.0], bounds[30.0], bounds[60.0], bounds[3600.0]) == (1, 1, 2, 2)
    assert (figures.takeovers, figures.handbacks, figures.restarts) == (1, 1, 2)


def test_a_worker_of_two_slots_shows_both_runs_and_has_a_free_slot_when_one_ends(own_database):
    with session_scope(own_database) as session:
        workers.register(session=session, name="w@h", host="h", pid=10, device="cuda:0", slots=2)
    assert live(own_database)[0]["slots"] == 2
    first, second = new_experiment(own_database, "a"), new_experiment(own_database, "b")
    claim(own_database, first, "h:11:x", worker_name="w@h")
    with session_scope(own_database) as session:
        assert workers.beat(session=session, name="w@h")
    assert live(own_database)[0]["idle_since"] is not None  # a slot is still free
    claim(own_database, second, "h:12:y", worker_name="w@h")  # the second pool process
    with session_scope(own_database) as session:
        assert workers.beat(session=session, name="w@h")
    (worker,) = live(own_database)  # one row per worker, not per run
    assert (worker["state"], worker["slots_in_use"], worker["idle_since"]) == ("busy", 2, None)
    assert worker["experiment_ids"] == [first, second] and worker["experiment_id"] == first
    with session_scope(own_database) as session:
        leases.finish_experiment(session=session, experiment_id=first, owner="h:11:x",
                               status=Status.succeeded)  # fmt: skip
        assert workers.beat(session=session, name="w@h")
    worker = live(own_database)[0]
    assert (worker["state"], worker["experiment_ids"]) == ("busy", [second])
    assert worker["idle_since"] is not None  # free since: a lost message would show now


def test_a_run_on_two_gpus_holds_both_of_a_workers_gpus(own_database):
    with session_scope(own_database) as session:
        workers.register(session=session, name="g@h", host="h", pid=10, device="cuda",
                         slots=2, gpus=2)  # fmt: skip
    (idle,) = live(own_database)
    assert (idle["gpus"], idle["gpus_in_use"], idle["gpu_holders"]) == (2, 0, [])
    ranked = new_experiment(own_database, "ranked", gpus=2, expert_parallel=2)
    claim(own_database, ranked, "h:11:x", worker_name="g@h")
    with session_scope(own_database) as session:
        assert workers.beat(session=session, name="g@h")
    (worker,) = live(own_database)
    # one pool process of two trains, but the run holds both GPUs: no slot is free
    assert (worker["state"], worker["slots_in_use"], worker["idle_since"]) == ("busy", 1, None)
    assert (worker["gpus_in_use"], worker["gpu_holders"]) == (
        2, [{"experiment_id": ranked, "gpus": 2}],
    )  # fmt: skip
    with session_scope(own_database) as session:
        leases.finish_experiment(session=session, experiment_id=ranked, owner="h:11:x",
                               status=Status.succeeded)  # fmt: skip
        assert workers.beat(session=session, name="g@h")
    (worker,) = live(own_database)
    assert (worker["gpus_in_use"], worker["state"]) == (0, "idle")
    assert worker["idle_since"] is not None


def test_seeds_trained_together_hold_one_slot(own_database):
    with session_scope(own_database) as session:
        workers.register(session=session, name="w@h", host="h", pid=10, device="cuda:0", slots=2)
    runs = [new_experiment(own_database, f"seed-{i}") for i in range(3)]
    for run, lease in zip(runs, ("aaaaaaaa", "bbbbbbbb", "cccccccc"), strict=True):
        claim(own_database, run, f"h:11:{lease}", worker_name="w@h")  # one pool process
    with session_scope(own_database) as session:
        assert workers.beat(session=session, name="w@h")
    (worker,) = live(own_database)
    assert (worker["slots_in_use"], worker["experiment_ids"]) == (1, runs)
    assert worker["idle_since"] is not None  # its other slot is free
