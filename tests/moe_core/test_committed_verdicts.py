"""The committed studies and sweeps (docs/results/**) re-read with today's criteria: every
verdict they stored, over seeds and per seed, passes or fails as it did. A criteria change
that turns one fails here, naming it; the reports quote those verdicts. (Significance may
differ: the older studies stored it by the rule of their time, |Δ| beyond 2 standard
errors; the reports say so.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from moe_core.criteria import judge_seeds
from moe_core.verdict_records import SeedsVerdict
from moe_core.verdict_words import format_verdict
from tests.record_check import assert_is

RESULTS = Path(__file__).parents[2] / "docs/results"
STUDIES = sorted(RESULTS.rglob("experiment_results.json"))
SWEEPS = sorted(RESULTS.rglob("sweep_results.json"))


def _outcome(verdict: dict[str, Any]) -> tuple[bool, bool, bool]:
    return verdict["passed"], verdict["primary"]["passed"], verdict["tertiary"]["passed"]


def _judged_again(stored: dict[str, Any], runs: list[dict], dense: list[dict]) -> SeedsVerdict:
    """The stored verdict's configuration judged again; it must pass and fail as it did,
    over the seeds and in each seed, and read as the criteria say it today."""
    fresh = judge_seeds(runs, dense)
    assert_is(fresh, SeedsVerdict)
    assert _outcome(fresh) == _outcome(stored)
    assert [_outcome(v) for v in fresh["per_seed"]] == [_outcome(v) for v in stored["per_seed"]]
    # no gap reads as reduced by more than 100% (an inverted gap says so)
    words = format_verdict("run", fresh)
    assert all(float(r) <= 100 for r in re.findall(r"reduced (-?\d+\.\d)%", words)), words
    return fresh


def test_the_committed_results_are_all_found():
    assert [p.relative_to(RESULTS).as_posix() for p in STUDIES + SWEEPS] == [
        "options-3seed/experiment_results.json",
        "options-3seed/jitter/experiment_results.json",
        "small-3seed/experiment_results.json",
        "sweep-small/margin/sweep_results.json",
        "sweep-small/sweep_results.json",
    ]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.parent.relative_to(RESULTS).as_posix())
def test_each_committed_studys_verdicts_pass_and_fail_as_they_did(path):
    study = json.loads(path.read_text())
    assert study["verdicts"]
    for name, stored in study["verdicts"].items():
        _judged_again(stored, study["runs"][name], study["runs"]["dense"])


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.parent.relative_to(RESULTS).as_posix())
def test_each_committed_sweep_trials_verdict_passes_and_fails_as_it_did(path):
    sweep = json.loads(path.read_text())
    judged = [t for t in sweep["trials"] if t.get("verdict")]
    assert judged
    for trial in judged:
        runs = trial["runs"]
        fresh = _judged_again(trial["verdict"], runs, sweep["dense"][: len(runs)])
        # the trial's state rests on tertiary over its seeds (a collapsed router)
        assert (trial["state"] == "tertiary_failed") is (not fresh["tertiary"]["passed"])
