"""A run's records and result in the store's columns and back (store.results), written
through the lease (idempotent epoch rows), on Postgres and SQLite."""

from __future__ import annotations

import math

import pytest

from store import leases, results
from store.db import session_scope
from store.leases import ClaimOutcome
from store.models import Status
from tests.factories import (
    claim,
    counts,
    new_experiment,
    record,
    result,
    run_row,
    succeed,
    write,
)

pytestmark = pytest.mark.services  # real Postgres (see tests/fixtures/services.py)


def test_a_replayed_epoch_overwrites_its_rows(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    write(database, experiment_id, "a", record(1, 5.0))
    write(database, experiment_id, "a", record(2, 4.0))
    replay = record(2, 3.5)  # resumed from epoch 1's checkpoint
    replay["eval_expert_stats"][0]["min_usage"] = 1.0
    write(database, experiment_id, "a", replay)

    assert counts(database, experiment_id) == (2, 8)  # 2 layers x (train, eval) per epoch
    with session_scope(database) as session:
        epochs = results.epoch_records(session=session, experiment_id=experiment_id)
        assert [row["epoch"] for row in epochs] == [1, 2]
        assert epochs[1]["train"]["loss"] == 3.5
        assert epochs[1]["train_eval"] == {"ce_loss": 3.45}
        assert [stats["layer"] for stats in epochs[1]["expert_stats"]] == [2, 4]
        assert [stats["layer"] for stats in epochs[1]["eval_expert_stats"]] == [2, 4]
        assert epochs[1]["eval_expert_stats"][0]["min_usage"] == 1.0  # the replay's
    run = run_row(database, experiment_id)
    assert run.current_epoch == 2 and run.best_val_loss == 3.5
    assert run.best_val_ce_loss == pytest.approx(3.49)


def test_an_epoch_keeps_training_and_evaluation_statistics_apart(database, experiment_id):
    """Training rows: over the epoch's steps, with each step's peak load; evaluation rows:
    the trained model over the validation set. A collapsed router shows in the second."""
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    write(database, experiment_id, "a", record(1, 5.0))
    with session_scope(database) as session:
        (epoch,) = results.epoch_records(session=session, experiment_id=experiment_id)
    assert epoch["expert_stats"][0] == {
        "layer": 2, "entropy": 2.0, "max_entropy": math.log(8), "min_usage": 10.0,
        "max_usage": 15.0, "usage": [12.5] * 8, "dropped": 0.1, "max_step_load": 30.0,
        "imbalance": 0.2, "max_imbalance": 1.4, "pad_ratio": 0.15, "z_loss": 3.1,
    }  # fmt: skip
    assert epoch["eval_expert_stats"][0] == {
        "layer": 2, "entropy": 1.5, "max_entropy": math.log(8), "min_usage": 0.0,
        "max_usage": 40.0, "usage": [40.0, 0.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0], "dropped": 0.2,
        "imbalance": 2.2,
    }  # fmt: skip


def test_an_epoch_without_evaluation_or_new_keys_is_still_written(database, experiment_id):
    """A dense run has no expert stats; an epoch that was not evaluated has no val,
    train_eval or eval stats; a record from before issue 8 has none of the new keys."""
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    bare = record(1, 5.0)
    for key in ("train_eval", "eval_expert_stats", "best_val_ce_loss", "best_epoch"):
        del bare[key]
    for stats in bare["expert_stats"]:
        for key in ("max_step_load", "imbalance", "max_imbalance", "pad_ratio", "z_loss"):
            del stats[key]
    unevaluated = {**record(2, 4.0), "val": None, "train_eval": None, "eval_expert_stats": []}
    write(database, experiment_id, "a", bare)
    write(database, experiment_id, "a", unevaluated)
    with session_scope(database) as session:
        first, second = results.epoch_records(session=session, experiment_id=experiment_id)
    assert first["train_eval"] is None and first["eval_expert_stats"] == []
    assert first["expert_stats"][0]["max_step_load"] is None
    assert first["expert_stats"][0]["z_loss"] is None  # a record from before issue 11
    assert second["val"] is None and second["train_eval"] is None
    assert second["eval_expert_stats"] == [] and len(second["expert_stats"]) == 2
    assert counts(database, experiment_id) == (2, 4)


def test_an_epoch_is_written_whole_or_not_at_all(database, experiment_id):
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    broken = record(1, 5.0)
    del broken["eval_expert_stats"][1]["entropy"]  # the last row written
    with pytest.raises(KeyError):
        write(database, experiment_id, "a", broken)
    assert counts(database, experiment_id) == (0, 0)


def test_a_finished_run_keeps_its_result_whole(database, experiment_id):
    """The result's numbers land in columns a reader can sort on, and the result the
    engine returned is rebuilt from them exactly (what the API serves and judges)."""
    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    write(database, experiment_id, "a", record(1, 5.0))
    whole = result(4.19, params=1000)
    whole["metrics"]["best_val_loss"] = 4.2  # CE + aux
    with session_scope(database) as session:
        assert leases.finish_experiment(session=session, experiment_id=experiment_id, owner="a",
                                      status=Status.succeeded, result=whole)  # fmt: skip
    run = run_row(database, experiment_id)
    assert (run.params, run.active_params) == (1000, 500)
    assert (run.test_loss, run.test_ce_loss) == (pytest.approx(4.29), pytest.approx(4.29))
    assert (run.best_val_loss, run.best_val_ce_loss) == (4.2, 4.19)  # the engine's final word
    assert run.evaluation["test_epoch"] == 2
    rebuilt = results.stored_result(run)
    # (the factory's run has a full config; the store adds the base the run trained on and
    # its ranks, one process here, trained alone)
    assert rebuilt == {**whole, "config": run.config, "base": run.base, "together": None,
                       "parallel": {"gpus": 1, "expert_parallel": 1}}  # fmt: skip

    # A run without a test split (or stored before there was one) has no `test`; one trained
    # with its seed siblings as one stack says so.
    other = new_experiment(database)
    bare = {**result(4.0), "test": None, "together": {"replicas": 3, "index": 1}}
    succeed(database, other, bare)
    rebuilt = results.stored_result(run_row(database, other))
    assert rebuilt["test"] is None and rebuilt["evaluation"] == bare["evaluation"]
    assert rebuilt["together"] == {"replicas": 3, "index": 1}
    assert run_row(database, other).test_loss is None


def test_an_epoch_record_comes_back_as_its_figures_whole(database, experiment_id):
    """The columns follow the record's keys: an epoch record written through the lease is
    read back as exactly its EpochFigures (moe_core.records), every key and value."""
    from moe_core.records import EpochFigures, keys

    assert claim(database, experiment_id, "a").outcome is ClaimOutcome.claimed
    written = record(1, 5.0)
    write(database, experiment_id, "a", written)
    with session_scope(database) as session:
        (read,) = results.epoch_records(session=session, experiment_id=experiment_id)
    assert read == {key: written[key] for key in keys(EpochFigures)}
