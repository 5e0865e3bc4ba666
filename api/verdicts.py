"""Success criteria of experiments against their dense baselines: which runs can be judged
yet, and why not (the verdicts themselves are store.verdicts')."""

from __future__ import annotations

from moe_core.verdict_records import ServedSeedsVerdict, ServedVerdict
from store.models import Experiment, Status
from store.verdicts import served_seeds_verdict, served_verdict


class NoVerdict(Exception):
    """Why an experiment cannot be judged yet (or at all): the 409's message."""


def verdict(experiment: Experiment, baseline: Experiment | None) -> ServedVerdict:
    """The criteria's verdict, with the baseline's id and its lines; raises NoVerdict."""
    baseline = _judgeable(experiment, baseline)
    try:
        return served_verdict(experiment, baseline)
    except ValueError as exc:  # e.g. a baseline without a finite validation loss
        raise NoVerdict(f"experiment {experiment.id}: {exc}") from exc


def seeds_verdict(pairs: list[tuple[Experiment, Experiment | None]]) -> ServedSeedsVerdict:
    """One preset over several seeds: each run paired with its seed's dense baseline
    (judge_seeds pairs results by position); raises NoVerdict while any pair can't be judged."""
    judged = [(run, _judgeable(run, baseline)) for run, baseline in pairs]
    try:
        return served_seeds_verdict(judged)
    except ValueError as exc:
        raise NoVerdict(str(exc)) from exc


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
