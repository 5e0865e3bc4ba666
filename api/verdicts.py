"""Success criteria of experiments against their dense baselines (moe_core.criteria)."""

from __future__ import annotations

from typing import Any

from moe_core.criteria import judge, judge_seeds, verdict_lines
from store.models import Experiment, Status
from store.results import stored_result


class NoVerdict(Exception):
    """Why an experiment cannot be judged yet (or at all): the 409's message."""


def verdict(experiment: Experiment, baseline: Experiment | None) -> dict[str, Any]:
    """The criteria's verdict, with the baseline's id; raises NoVerdict."""
    baseline = _judgeable(experiment, baseline)
    try:
        judged = judge(stored_result(experiment), stored_result(baseline))
    except ValueError as exc:  # e.g. a baseline without a finite validation loss
        raise NoVerdict(f"experiment {experiment.id}: {exc}") from exc
    return {"baseline_id": baseline.id, **judged, "lines": verdict_lines(judged)}


def seeds_verdict(pairs: list[tuple[Experiment, Experiment | None]]) -> dict[str, Any]:
    """One preset over several seeds: each run paired with its seed's dense baseline
    (judge_seeds pairs results by position); raises NoVerdict while any pair can't be judged."""
    judged = [(run, _judgeable(run, baseline)) for run, baseline in pairs]
    try:
        over_seeds = judge_seeds(
            [stored_result(run) for run, _ in judged],
            [stored_result(baseline) for _, baseline in judged],
        )
    except ValueError as exc:
        raise NoVerdict(str(exc)) from exc
    return {**over_seeds, "lines": verdict_lines(over_seeds)}


def _judgeable(experiment: Experiment, baseline: Experiment | None) -> Experiment:
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
    return baseline
