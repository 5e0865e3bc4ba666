"""Success criteria of an experiment against its dense baseline (moe_core.criteria)."""

from __future__ import annotations

from typing import Any

from moe_core.criteria import judge
from store.models import Experiment, Status
from store.runs import stored_result


class NoVerdict(Exception):
    """Why an experiment cannot be judged yet (or at all): the 409's message."""


def verdict(experiment: Experiment, baseline: Experiment | None) -> dict[str, Any]:
    """The criteria's verdict, with the baseline's id; raises NoVerdict."""
    if experiment.dense:
        raise NoVerdict(f"experiment {experiment.id} is a dense baseline; it has no verdict")
    if baseline is None:
        raise NoVerdict(
            f"experiment {experiment.id} has no baseline: create it with baseline_id set to "
            "a dense experiment, or run it in a study"
        )
    for run, role in ((experiment, "experiment"), (baseline, "baseline")):
        if run.status != Status.succeeded:
            raise NoVerdict(f"{role} {run.id} is {run.status}; a verdict needs both runs succeeded")
    return {
        "baseline_id": baseline.id,
        **judge(stored_result(experiment), stored_result(baseline)),
    }
