"""The verdict's records are declared once (moe_core.verdict_records): what the criteria
return, the lines they read in, the statistics, a sweep trial's objective and what the store
hands out have exactly their keys, so a key added in one place only fails here (the API's
side: tests/api/test_studies_api.py; the MLflow sink's: tests/worker/test_sinks.py)."""

from __future__ import annotations

import pytest

from moe_core.criteria import judge, judge_seeds
from moe_core.search import SweepConfig, objective_of
from moe_core.statistics import mean_se, paired_t_test
from moe_core.verdict_records import (
    MeanSE,
    Objective,
    PairedTest,
    SeedsVerdict,
    ServedSeedsVerdict,
    ServedVerdict,
    Verdict,
    VerdictLine,
)
from moe_core.verdict_words import verdict_lines
from store.models import Experiment, Status
from store.verdicts import served_seeds_verdict, served_verdict
from tests.factories import result
from tests.record_check import assert_is, mismatches

from .test_criteria import _result, _seeded


@pytest.mark.parametrize(
    "run",
    [
        _result(val=[3.9], train=[3.0]),  # a lower loss
        _result(val=[4.3628], train=[4.4581]),  # worse, its gap inverted: passes on the gap
        _result(val=[4.0], train=[None]),  # no gap to judge
        _result(val=[3.9], train=[3.0], usage=(50, 50, 0, 0, 0, 0, 0, 0)),  # collapsed
    ],
    ids=["lower", "inverted", "no-gap", "collapsed"],
)
def test_judge_returns_exactly_the_declared_verdict_and_its_lines(run):
    verdict = judge(run, _result(val=[4.0], train=[3.8739]))
    assert_is(verdict, Verdict)
    for line in verdict_lines(verdict):
        assert_is(line, VerdictLine)


def test_judge_without_moe_layers_or_a_dense_result_is_still_the_declared_verdict():
    dense_like = _result(val=[3.9], train=[3.0])
    dense_like["metrics"]["eval_expert_stats_history"] = []
    verdict = judge(dense_like, dense_baseline_loss=4.0)
    assert verdict["tertiary"]["reason"] and not verdict["tertiary"]["layers"]
    assert_is(verdict, Verdict)


@pytest.mark.parametrize("deltas", [[-0.05], [-0.05, -0.04, -0.06], [0.3, 0.35, 0.4]])
def test_judge_seeds_returns_exactly_the_declared_verdict_over_seeds(deltas):
    verdict = judge_seeds(*_seeded(deltas, gap=-0.1, dense_gap=0.12))
    assert_is(verdict, SeedsVerdict)
    assert_is(verdict["primary"]["val_loss_delta"], PairedTest)
    for line in verdict_lines(verdict):
        assert_is(line, VerdictLine)


def test_the_statistics_and_a_sweep_trials_objective_are_the_declared_records():
    assert_is(mean_se([1.0, 2.0]), MeanSE)
    assert_is(paired_t_test([1.0, 2.0, 4.0]), PairedTest)
    assert_is(paired_t_test([1.0]), PairedTest)  # one value: the nulls, each key present
    sweep = SweepConfig(base_preset="micro", method="grid",
                        space={"capacity_factor": {"choices": [1.0]}})  # fmt: skip
    runs, dense = [result(3.9), result(3.8)], [result(4.0, dense=True)] * 2
    for seeds in (1, 2):
        assert_is(objective_of(sweep, runs[:seeds], dense[:seeds]), Objective)


def _stored(run_result: dict, run_id: int, *, dense: bool = False) -> Experiment:
    """An experiment row holding `run_result` (not in any database: the builder reads it)."""
    return Experiment(id=run_id, dense=dense, status=Status.succeeded, config=run_result["config"],
                      base={"seed": run_result["seed"]}, metrics=run_result["metrics"],
                      params=run_result["params"], active_params=run_result["active_params"],
                      evaluation=None)  # fmt: skip


def test_the_store_hands_out_exactly_the_declared_served_verdicts():
    dense, run = _stored(result(4.0, dense=True), 1, dense=True), _stored(result(3.9), 2)
    served = served_verdict(run, dense)
    assert_is(served, ServedVerdict)
    assert served["baseline_id"] == 1 and served["lines"] == verdict_lines(served)
    over_seeds = served_seeds_verdict([(run, dense), (_stored(result(3.8), 3), dense)])
    assert_is(over_seeds, ServedSeedsVerdict)


def test_a_key_in_one_place_only_is_caught():
    verdict = judge(_result(val=[3.9], train=[3.0]), _result(val=[4.0], train=[3.8]))
    verdict["primary"]["gap_closed"] = True  # on purpose
    del verdict["tertiary"]["layers"][0]["dropped"]  # on purpose
    assert mismatches(verdict, Verdict) == [
        "$.primary (Primary): undeclared ['gap_closed'], missing []",
        "$.tertiary.layers[0] (TertiaryLayer): undeclared [], missing ['dropped']",
    ]
    verdict = judge(_result(val=[3.9], train=[3.0]), _result(val=[4.0], train=[3.8]))
    verdict["primary"]["gap_outcome"] = "halved"  # on purpose
    assert mismatches(verdict, Verdict)[0].startswith("$.primary.gap_outcome: 'halved' not in")
