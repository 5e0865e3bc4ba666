"""Markdown sections from a study's experiment_results.json (what docs/results/ reports quote).

    .venv/bin/python scripts/study_tables.py docs/results/options-3seed/experiment_results.json

Prints, as markdown sections: one row per configuration (means over seeds; each Δ paired by
seed, ± its standard error, `*` where significant at statistics.CONFIDENCE), the paired
t-tests behind those stars (interval, t, p), the verdicts and the comparison table, then
one row per run. The routing columns are the last training epoch's (mean over its steps and
MoE layers; the worst step of any layer for "worst step") and the final model's evaluation
statistics.

The verdicts are recomputed from the runs with today's moe_core.criteria (judge_seeds), not
read from the JSON: a study keeps what the criteria said when it ran, and a report re-read
with a newer rule says what the rule says now.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moe_core.criteria import judge_seeds
from moe_core.measures import best_val_loss, generalisation_gap, throughput
from moe_core.statistics import CONFIDENCE, confidence_label, mean_se, paired_t_test
from moe_core.verdict_records import SeedsVerdict
from moe_core.verdict_words import format_p, format_table, format_verdict

Run = dict[str, Any]


def _layers(run: Run, key: str) -> list[dict[str, Any]]:
    history = run["metrics"].get(key) or []
    return history[-1]["layers"] if history else []


def _mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values there are (criteria's: None and non-finite left out)."""
    return mean_se(list(values))["mean"]


def _given(rows: Iterable[Mapping[str, Any]], key: str) -> list[float]:
    return [row[key] for row in rows if row.get(key) is not None]


def routing(run: Run) -> dict[str, float | None]:
    """The last epoch's routing statistics, over the run's MoE layers."""
    train, final = _layers(run, "expert_stats_history"), _layers(run, "eval_expert_stats_history")
    return {
        "imbalance": _mean(_given(train, "imbalance")),
        "max_imbalance": max(_given(train, "max_imbalance"), default=None),
        "dropped": _mean(_given(train, "dropped")),
        "z_loss": _mean(_given(train, "z_loss")),
        "final_min_use": min(_given(final, "min_usage"), default=None),
    }


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x: float | None, fmt: str = ".2f", scale: float = 1.0) -> str:
    return "-" if x is None else f"{scale * x:{fmt}}%"


def _pm(test: Mapping[str, Any]) -> str:
    """'-0.0450 ± 0.0107*' from a paired_t_test dict: `*` where significant."""
    if test["mean"] is None:
        return "-"
    if test["se"] is None:
        return f"{test['mean']:+.4f}"
    star = "*" if test["significant"] else ""
    return f"{test['mean']:+.4f} ± {test['se']:.4f}{star}"


def _ce(run: Run | None) -> float | None:
    return best_val_loss(run["metrics"]) if run else None


def _gap(run: Run | None) -> float | None:
    return generalisation_gap(run["metrics"]) if run else None


def _paired(
    runs: Sequence[Run | None],
    against: Sequence[Run | None],
    measure: Callable[[Run | None], float | None] = _ce,
) -> Mapping[str, Any]:
    """The paired t-test of `measure`, paired by seed (position); a seed whose run did not
    finish on either side is left out."""
    pairs = [(measure(r), measure(a)) for r, a in zip(runs, against, strict=True)]
    return paired_t_test([x - y for x, y in pairs if x is not None and y is not None])


def verdicts(study: dict[str, Any]) -> dict[str, SeedsVerdict]:
    """Each configuration's verdict by today's criteria: judge_seeds over the seeds whose
    run and dense run both finished (none without one)."""
    runs: dict[str, list[Run | None]] = study["runs"]
    judged = {}
    for name, group in runs.items():
        pairs = [(r, d) for r, d in zip(group, runs["dense"], strict=True) if r and d]
        if name != "dense" and pairs:
            judged[name] = judge_seeds([r for r, _ in pairs], [d for _, d in pairs])
    return judged


def _by_gap_only(verdict: SeedsVerdict) -> bool:
    return verdict["primary"]["passed"] and not verdict["primary"]["beats_dense_loss"]


def summary(study: dict[str, Any]) -> str:
    runs: dict[str, list[Run]] = study["runs"]
    dense, reference = runs["dense"], runs.get("baseline")
    dense_tps = _mean(throughput(r["metrics"]) for r in dense if r)
    judged = verdicts(study)
    rows = [
        "| run | params (active) | val CE | Δ vs dense | Δ vs baseline | gap | test CE "
        "| tok/s (× dense) | imbalance (worst step) | dropped | z-loss | final min use "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs_of_name in runs.items():
        group = [r for r in runs_of_name if r]  # a run that did not succeed is null
        if not group:
            rows.append(f"| {name} | no finished run |" + " |" * 11)
            continue
        r0, stats = group[0], [routing(r) for r in group]
        tps = _mean(throughput(r["metrics"]) for r in group)
        verdict = judged.get(name)
        # the verdict's own ratio where there is one (a mean of per-seed ratios)
        ratio = verdict["secondary"]["throughput_ratio"] if verdict else None
        if ratio is None and tps and dense_tps:
            ratio = tps / dense_tps
        mark = (
            ""
            if verdict is None
            else ("✓" if verdict["passed"] else "✗")
            + (" sig" if verdict.get("significant") else "")
            # a pass the gap rule alone gave, with a loss no lower than dense's: said here too
            + (" (gap rule only)" if _by_gap_only(verdict) else "")
        )

        avg = {k: _mean(_given(stats, k)) for k in ("imbalance", "dropped", "z_loss")}
        worst = max(_given(stats, "max_imbalance"), default=None)
        final_min = min(_given(stats, "final_min_use"), default=None)
        rows.append(
            f"| {name} | {r0['params']:,} ({r0['active_params']:,}) "
            f"| {_f(_mean(map(_ce, group)), '.4f')} "
            f"| {'' if name == 'dense' else _pm(_paired(runs_of_name, dense))} "
            f"| {'' if reference is None or name in ('dense', 'baseline') else _pm(_paired(runs_of_name, reference))} "  # noqa: E501
            f"| {_f(_mean(generalisation_gap(r['metrics']) for r in group), '+.3f')} "
            f"| {_f(_mean(r['test']['ce_loss'] for r in group), '.4f')} "
            f"| {_f(tps, ',.0f')} ({_f(ratio, '.2f')}) "
            f"| {_f(avg['imbalance'], '.2f')} ({_f(worst, '.2f')}) "
            f"| {_pct(avg['dropped'], scale=100)} "
            f"| {_f(avg['z_loss'], '.2f')} "
            f"| {_pct(final_min, '.1f')} | {mark} |"
        )
    n = len(dense)
    rows.append(
        f"\nMeans over {n} seed(s); Δ paired by seed, ± standard error, * significant at "
        f"{confidence_label()} (a two-sided paired t-test: the table of t-tests has each interval and "
        "p-value); verdicts by today's criteria. "
        "Routing columns: last training epoch (imbalance = max/mean load − 1, mean over "
        "steps and layers; worst step of any layer; dropped = share of assignments over "
        "capacity; z-loss = mean squared router log-sum-exp); final min use: the least "
        "used expert of any layer over the validation set, final model."
    )
    return "\n".join(rows)


def t_tests(study: dict[str, Any]) -> str:
    """The paired t-tests behind the summary's stars: each configuration's Δ val CE and Δ gap
    against dense, and its Δ val CE against the baseline."""
    runs: dict[str, list[Run | None]] = study["runs"]
    dense, reference = runs["dense"], runs.get("baseline")
    rows = [
        f"| run | Δ | against | mean ± SE | {confidence_label()} CI | t (df) | p | at {confidence_label()} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    criticals: dict[int, float] = {}
    for name, group in runs.items():
        if name == "dense":
            continue
        tests = [
            ("val CE", "dense", _paired(group, dense)),
            ("gap", "dense", _paired(group, dense, _gap)),
        ]
        if reference is not None and name != "baseline":
            tests.append(("val CE", "baseline", _paired(group, reference)))
        for what, against, test in tests:
            if test["p_value"] is None:
                rows.append(f"| {name} | {what} | {against} | {_pm(test)} | - | - | - | unknown |")
                continue
            criticals[test["df"]] = test["t_critical"]
            t = "SE 0" if test["t"] is None else f"{test['t']:+.2f}"
            rows.append(
                f"| {name} | {what} | {against} | {test['mean']:+.4f} ± {test['se']:.4f} "
                f"| [{test['ci_low']:+.4f}, {test['ci_high']:+.4f}] | {t} ({test['df']}) "
                f"| {format_p(test['p_value'])} "
                f"| {'significant' if test['significant'] else 'not significant'} |"
            )
    t_values = ", ".join(f"{t:.3f} for {df} df" for df, t in sorted(criticals.items()))
    rows.append(
        f"\nEach Δ paired by seed (a seed whose run did not finish on either side left out); "
        f"{confidence_label()} CI: mean ± t·SE, Student's t with n − 1 degrees of freedom ({t_values}); "
        f"p: two-sided paired t-test of a zero mean; significant when p < "
        f"{1 - CONFIDENCE:.2g}, which is when the interval excludes 0."
    )
    return "\n".join(rows)


def verdict_block(study: dict[str, Any]) -> str:
    """The criteria's own printout (format_verdict, format_table) of today's verdicts, as
    `python -m moe_core study` prints them."""
    runs: dict[str, list[Run | None]] = study["runs"]
    judged = verdicts(study)
    finished = {name: [r for r in runs[name] if r] for name in judged}
    lines = [format_verdict(name, verdict) for name, verdict in judged.items()]
    table = format_table([r for r in runs["dense"] if r], finished, judged)
    return "\n".join(["```", *lines, "", table, "```"])


def per_seed(study: dict[str, Any]) -> str:
    runs: dict[str, list[Run]] = study["runs"]
    rows = [
        "| seed | run | best epoch | val CE | Δ vs dense | gap | test CE | tok/s "
        "| imbalance (worst) | dropped | final min use |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    seeds = study.get("seeds") or []
    for i, dense in enumerate(runs["dense"]):
        for name, group in runs.items():
            r = group[i]
            if r is None:
                seed = seeds[i] if i < len(seeds) else "-"
                rows.append(f"| {seed} | {name} | did not finish |" + " |" * 8)
                continue
            m, s = r["metrics"], routing(r)
            ce, dense_ce = _ce(r), _ce(dense)
            delta = (
                ce - dense_ce
                if name != "dense" and ce is not None and dense_ce is not None
                else None
            )
            rows.append(
                f"| {r['seed']} | {name} | {m['best_epoch']} | {_f(_ce(r), '.4f')} "
                f"| {_f(delta, '+.4f') if delta is not None else ''} "
                f"| {_f(generalisation_gap(m), '+.4f')} | {_f(r['test']['ce_loss'], '.4f')} "
                f"| {_f(throughput(m), ',.0f')} "
                f"| {_f(s['imbalance'], '.2f')} ({_f(s['max_imbalance'], '.2f')}) "
                f"| {_pct(s['dropped'], scale=100)} "
                f"| {_pct(s['final_min_use'], '.1f')} |"
            )
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit(__doc__)
    study = json.loads(Path(argv[0]).read_text())
    sections = [
        ("Means over seeds", summary(study)),
        (f"Paired t-tests at {confidence_label()}", t_tests(study)),
        ("Verdicts (recomputed with today's moe_core.criteria)", verdict_block(study)),
        ("Per seed", per_seed(study)),
    ]
    print("\n\n".join(f"## {title}\n\n{body}" for title, body in sections))


if __name__ == "__main__":
    main(sys.argv[1:])
