"""scripts/sweep_tables.py on the committed sweep: its numbers are the sweep's own."""

import json
import re
from pathlib import Path

import pytest

from moe_core.criteria import best_val_loss
from scripts import sweep_tables

RESULTS = Path(__file__).parents[2] / "docs/results/sweep-small"
# the committed sweep's two runs: the median pruner's, and prune_margin's
SWEEPS = [RESULTS / "sweep_results.json", RESULTS / "margin/sweep_results.json"]


def _rows(table: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ") and not line.startswith("| #") and not line.startswith("| rank")
    ]


def test_spearman_ranks_ties_together_and_refuses_too_few_pairs():
    assert sweep_tables.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert sweep_tables.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: x ranks 0, 1.5, 1.5, 3 against y's 0..3
    assert sweep_tables.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)
    assert sweep_tables.spearman([1, 2], [2, 1]) is None
    assert sweep_tables.spearman([5, 5, 5], [1, 2, 3]) is None


@pytest.mark.parametrize("path", SWEEPS, ids=["median", "margin"])
def test_each_trial_row_is_the_trials_own_objective_and_state(path):
    sweep = json.loads(path.read_text())
    rows = _rows(sweep_tables.trials(sweep))
    assert [int(r[0]) for r in rows] == [t["number"] for t in sweep["trials"]]
    fields = list(sweep["sweep"]["space"])
    dense = [best_val_loss(d["metrics"]) for d in sweep["dense"]]
    for row, trial in zip(rows, sweep["trials"], strict=True):
        assert row[1 : 1 + len(fields)] == [sweep_tables._value(trial["params"][f]) for f in fields]
        o = trial["objective"]
        state, delta, per_seed = row[1 + len(fields) : 4 + len(fields)]
        if trial["state"] == "pruned":
            assert state.startswith(f"pruned after epoch {trial['pruned_at_epoch']} (val CE ")
            assert delta == per_seed == "-"
            # the median pruner's rule, in the row: worse than the earlier trials' median
            # by more than the margin
            shown, median = (float(v) for v in re.findall(r"\d+\.\d{4}", state)[:2])
            assert shown == pytest.approx(trial["epochs"][-1]["val"]["ce_loss"], abs=5e-5)
            assert shown > median + sweep["sweep"].get("prune_margin", 0.0)
            continue
        assert delta.startswith(f"{o['mean']:+.4f} ± {o['se']:.4f}")
        assert delta.endswith("*") is bool(o["significant"])
        # each seed's Δ is that seed's best val CE minus its dense run's
        mine = [best_val_loss(r["metrics"]) for r in trial["runs"]]
        assert per_seed == ", ".join(f"{m - d:+.4f}" for m, d in zip(mine, dense, strict=True))
        assert state == ("router collapsed" if trial["state"] == "tertiary_failed" else "complete")


@pytest.mark.parametrize("path", SWEEPS, ids=["median", "margin"])
def test_the_ranking_is_the_sweeps_and_never_holds_a_pruned_or_collapsed_trial(path):
    sweep = json.loads(path.read_text())
    table = sweep_tables.ranking(sweep)
    ranked = [int(r[1]) for r in _rows(table)]
    assert ranked == sweep["ranking"] and ranked[0] == sweep["best"]
    by_number = {t["number"]: t for t in sweep["trials"]}
    assert all(by_number[n]["state"] == "complete" for n in ranked)
    means = [by_number[n]["objective"]["mean"] for n in ranked]
    assert means == sorted(means)
    for t in sweep["trials"]:
        if t["number"] not in ranked:
            assert f"#{t['number']} (" in table
