"""A run's verdict as the service hands it out, from the stored results: the criteria's
verdict (moe_core.criteria), its lines (moe_core.verdict_words) and, for one run, the dense
run it was judged against. The one builder of what GET /experiments/{id}/verdict and a
study's rows serve and the MLflow sink mirrors (store.tracking.run_verdict)."""

from __future__ import annotations

from moe_core.criteria import judge, judge_seeds
from moe_core.verdict_records import ServedSeedsVerdict, ServedVerdict
from moe_core.verdict_words import verdict_lines
from store.models import Experiment
from store.results import stored_result


def served_verdict(run: Experiment, baseline: Experiment) -> ServedVerdict:
    """`run` judged against the dense run `baseline`, both succeeded; raises ValueError
    where the criteria cannot judge (a baseline without a finite validation loss)."""
    judged = judge(stored_result(run), stored_result(baseline))
    return {**judged, "baseline_id": baseline.id, "lines": verdict_lines(judged)}


def served_seeds_verdict(pairs: list[tuple[Experiment, Experiment]]) -> ServedSeedsVerdict:
    """One configuration over seeds: each run with the dense run of its seed (judge_seeds
    pairs them by position); raises ValueError as judge_seeds does."""
    judged = judge_seeds(
        [stored_result(run) for run, _ in pairs], [stored_result(dense) for _, dense in pairs]
    )
    return {**judged, "lines": verdict_lines(judged)}
