"""The store's side of a sweep: trials proposed once whoever advances, and a cancel that
ends its runs and proposes nothing more."""

from __future__ import annotations

from moe_core.search import SweepConfig
from store import sweeps
from store.db import session_scope
from store.models import Experiment, Status


def grid(**fields):
    return SweepConfig(**{"base_preset": "micro", "method": "grid", "seeds": 2,
                          "space": {"learning_rate": {"choices": [0.003, 0.002, 0.001]}},
                          **fields})  # fmt: skip


def test_a_sweep_starts_with_a_dense_run_per_seed_and_parallel_trials_each_proposed_once(database):
    config = grid()
    with session_scope(database) as session:
        sweep, runs = sweeps.create_sweep(
            session=session, config=config, base=config.base_config(), parallel=2
        )
        session.commit()
        sweep_id = sweep.id
        assert [(r.trial_number, r.base["seed"], r.dense) for r in runs] == [
            (None, 1337, True), (None, 1338, True), (0, 1337, False), (0, 1338, False),
            (1, 1337, False), (1, 1338, False),
        ]  # fmt: skip
        dense = {r.base["seed"]: r.id for r in runs if r.dense}
        assert all(r.baseline_id == dense[r.base["seed"]] for r in runs if not r.dense)
        assert [r.base["learning_rate"] for r in runs if r.trial_number == 1] == [0.002, 0.002]
    for _ in range(2):  # nothing ended: advancing again and again proposes nothing
        with session_scope(database) as session:
            assert sweeps.advance(session=session, sweep_id=sweep_id) == []
    with session_scope(database) as session:
        assert [t.number for t in session.get(sweeps.Sweep, sweep_id).trials] == [0, 1]


def test_a_cancelled_sweep_ends_its_runs_and_proposes_nothing_more(database):
    config = grid()
    with session_scope(database) as session:
        sweep, _ = sweeps.create_sweep(
            session=session, config=config, base=config.base_config(), parallel=1
        )
        session.commit()
        sweep_id = sweep.id
    with session_scope(database) as session:
        cancelled = sweeps.cancel(session=session, sweep_id=sweep_id)
        assert cancelled.status == "cancelled" and [t.state for t in cancelled.trials] == [
            "cancelled"
        ]
    with session_scope(database) as session:
        assert sweeps.advance(session=session, sweep_id=sweep_id) == []
        statuses = session.query(Experiment.status).filter(Experiment.sweep_id == sweep_id).all()
        assert {s for (s,) in statuses} == {Status.cancelled}
        assert len(session.get(sweeps.Sweep, sweep_id).trials) == 1


def _end(session, ids, status=Status.succeeded):
    session.query(Experiment).filter(Experiment.id.in_(ids)).update(
        {"status": status}, synchronize_session=False
    )
    session.commit()


def test_a_sweep_whose_dense_run_vanished_ends_cleanly_without_raising(database):
    config = grid(seeds=1)
    with session_scope(database) as session:
        sweep, runs = sweeps.create_sweep(
            session=session, config=config, base=config.base_config(), parallel=2
        )
        session.commit()
        sweep_id = sweep.id
        dense = next(r.id for r in runs if r.dense)
        trials = [r.id for r in runs if not r.dense]
        # removed under the sweep (the API refuses it now; a row may vanish by hand)
        session.query(Experiment).filter(Experiment.id == dense).delete()
        session.commit()
        _end(session, trials)
    with session_scope(database) as session:
        assert sweeps.advance(session=session, sweep_id=sweep_id) == []  # nothing proposed
    with session_scope(database) as session:
        ended = session.get(sweeps.Sweep, sweep_id)
        assert ended.status == "finished"
        assert [t.state for t in ended.trials] == ["failed", "failed"]
        assert "the dense run of seed 1337 is gone" in ended.trials[0].objective["error"]


def test_a_trial_whose_run_vanished_fails_and_the_sweep_goes_on(database):
    config = grid(seeds=2)
    with session_scope(database) as session:
        sweep, runs = sweeps.create_sweep(
            session=session, config=config, base=config.base_config(), parallel=1
        )
        session.commit()
        sweep_id = sweep.id
        first, second = [r.id for r in runs if r.trial_number == 0]
        session.query(Experiment).filter(Experiment.id == second).delete()
        session.commit()
        _end(session, [first])
    with session_scope(database) as session:
        created = sweeps.advance(session=session, sweep_id=sweep_id)
    with session_scope(database) as session:
        trials = session.get(sweeps.Sweep, sweep_id).trials
        assert trials[0].state == "failed"
        assert trials[0].objective == {"error": "1 of the trial's 2 runs are gone"}
        assert len(created) == 2 and [t.number for t in trials] == [0, 1]  # the next trial


def test_a_sweep_is_deleted_with_its_runs_only_once_it_has_ended(database):
    config = grid(seeds=1)
    with session_scope(database) as session:
        sweep, runs = sweeps.create_sweep(
            session=session, config=config, base=config.base_config(), parallel=1
        )
        session.commit()
        sweep_id, ids = sweep.id, [r.id for r in runs]
    with session_scope(database) as session:
        assert sweeps.delete(session=session, sweep_id=sweep_id) is None  # running
        sweeps.cancel(session=session, sweep_id=sweep_id)
    with session_scope(database) as session:
        deleted = sweeps.delete(session=session, sweep_id=sweep_id)
        assert sorted(i for i, _ in deleted) == sorted(ids)
        assert session.get(sweeps.Sweep, sweep_id) is None
        assert session.query(Experiment).filter(Experiment.id.in_(ids)).count() == 0


def test_a_trial_trained_together_is_judged_on_its_seeds_mean_once_each_training_seed_has_it():
    from types import SimpleNamespace
    from typing import Any

    # the runs as _curve reads them: an id and a status
    runs: list[Any] = [SimpleNamespace(id=1, status=Status.running),
                       SimpleNamespace(id=2, status=Status.running),
                       SimpleNamespace(id=3, status=Status.succeeded)]  # fmt: skip
    curves = {1: {1: 5.0, 2: 4.0, 3: 3.5}, 2: {1: 6.0}, 3: {1: 4.0}}
    # epoch 1 is every seed's; epoch 2 waits for seed 2, still training, though seed 1 is past it
    assert sweeps._curve(runs, curves) == {1: 5.0}
    runs[1].status = Status.cancelled  # seed 2 ended: it holds no epoch back
    assert sweeps._curve(runs, curves) == {1: 5.0, 2: 4.0, 3: 3.5}
    assert sweeps._curve(runs[:1], curves) == curves[1]  # one seed's own
