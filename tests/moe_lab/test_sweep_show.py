"""`moe-lab sweep show` while a sweep runs and once none of its trials can be best: the
trials counted against the budget with their states, and the line saying why there is no
best (the sweep written straight into the store, no training)."""

from __future__ import annotations

import pytest

from moe_core.search import SweepConfig
from store import sweeps
from store.db import session_scope
from store.models import SweepStatus

pytestmark = pytest.mark.services


def seed(database: str, method: str, states: dict[int, str]) -> int:
    """A sweep of a 3-trial budget whose proposed trials take `states` (objective -0.1 each
    that ended), the least used expert of a collapsed router at 1.2%."""
    config = SweepConfig(base_preset="micro", method=method, trials=3, seeds=1, name=method,
                         space={"capacity_factor": {"choices": [1.0, 1.5, 2.0]}})  # fmt: skip
    with session_scope(database) as session:
        sweep, _ = sweeps.create_sweep(session=session, config=config,
                                       base=config.base_config(), parallel=len(states))  # fmt: skip
        session.flush()
        for trial in sweep.trials:
            trial.state = states[trial.number]
            if trial.state != "running":
                trial.objective = {"name": "delta_val_ce", "mean": -0.1, "se": 0.01}
                trial.verdict = {"passed": False, "tertiary": {"passed": False, "min_usage": 1.2}}
        if "running" not in states.values():
            sweep.status = SweepStatus.finished
        session.commit()
        return sweep.id


def test_show_counts_trials_against_the_budget_and_says_why_there_is_no_best(settings, cli):
    running = seed(settings.database_url, "random", {0: "complete", 1: "running"})
    shown = cli("sweep", "show", running)
    assert shown.exit_code == 0, shown.output
    head = shown.output.splitlines()[0]
    assert "running, random, 2 of 3 trials (1 complete, 1 running) x 1 seed(s)" in head
    assert "no best" not in shown.output  # trial 0 can be best

    collapsed = seed(settings.database_url, "grid", dict.fromkeys(range(3), "tertiary_failed"))
    shown = cli("sweep", "show", collapsed)
    assert "3 of 3 trials (3 tertiary failed)" in shown.output.splitlines()[0]
    assert (
        "no best trial, none passed: all 3 failed tertiary (a router collapsed: every expert "
        "must get ≥ 5% of assignments; the least used got 1.2%)"
    ) in " ".join(shown.output.split())
    # what ran is still listed, by its objective
    assert [line.split()[0] for line in shown.output.splitlines() if line.split()[:1] in
            (["0"], ["1"], ["2"])] == ["0", "1", "2"]  # fmt: skip
