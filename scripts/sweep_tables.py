"""Markdown sections from a sweep's sweep_results.json (what docs/results/ reports quote).

    .venv/bin/python -m scripts.sweep_tables docs/results/sweep-small/sweep_results.json

Prints: every trial in the order proposed (its fields, its state, the objective ± SE with
each seed's value, p, the speed and routing of its runs, the verdict), the ranking with
each trial's 95% interval, the objective by each field (a choice's values side by side, a
range's rank correlation), the importances, and the dense runs. Routing columns are
study_tables.py's: the last training epoch's share of assignments over capacity and the
final model's least used expert over the validation set.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from moe_core.measures import best_val_loss, throughput
from moe_core.statistics import confidence_label, mean_se
from scripts.study_tables import _f, _given, _mean, _pct, _pm, routing

Trial = dict[str, Any]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return json.dumps(value)


def _fields(sweep: dict[str, Any]) -> list[str]:
    return list(sweep["sweep"]["space"])


def _dense_ce(sweep: dict[str, Any]) -> list[float | None]:
    return [best_val_loss(run["metrics"]) for run in sweep["dense"]]


def pruner_saw(trial: Trial, sweep: dict[str, Any]) -> dict[str, float | None] | None:
    """What the median pruner saw when it stopped `trial`: the first seed's val CE then,
    against the median of the trials complete before it at that epoch (and dense's, for
    scale). None for a trial not pruned, or pruned before its val CE was kept."""
    epochs = trial.get("epochs") or []
    ce = (epochs[-1].get("val") or {}).get("ce_loss") if epochs else None
    if trial["state"] != "pruned" or ce is None:
        return None
    at = len(epochs) - 1
    earlier = [
        t["runs"][0]["metrics"]["val_ce_losses"][at]
        for t in sweep["trials"]
        if t["number"] < trial["number"] and t["state"] in ("complete", "tertiary_failed")
        and len(t["runs"][0]["metrics"]["val_ce_losses"]) > at
    ]  # fmt: skip
    return {
        "val_ce": ce,
        "median": statistics.median(earlier) if earlier else None,
        "dense": sweep["dense"][0]["metrics"]["val_ce_losses"][at],
    }


def _state(trial: Trial, sweep: dict[str, Any] | None = None) -> str:
    if trial["state"] == "pruned":
        said = f"pruned after epoch {trial['pruned_at_epoch']}"
        saw = None if sweep is None else pruner_saw(trial, sweep)
        if saw is None:
            return said
        return (
            f"{said} (val CE {saw['val_ce']:.4f}; median of the earlier complete trials "
            f"{_f(saw['median'], '.4f')}, dense {saw['dense']:.4f})"
        )
    if trial["state"] == "tertiary_failed":
        return "router collapsed"
    return trial["state"]


def trials(sweep: dict[str, Any]) -> str:
    """One row per trial, in the order proposed."""
    fields = _fields(sweep)
    dense_tps = [throughput(run["metrics"]) for run in sweep["dense"]]
    rows = [
        "| # | " + " | ".join(fields) + " | state | Δ val CE ± SE | per seed | p "
        "| tok/s × dense | dropped | final min use | verdict |",
        "|---|" + "---|" * len(fields) + "---|---|---|---|---|---|---|---|",
    ]
    for trial in sweep["trials"]:
        params = " | ".join(_value(trial["params"].get(f, "—")) for f in fields)
        o, runs = trial["objective"], trial["runs"]
        seeds = ", ".join(f"{v:+.4f}" for v in o.get("values") or [])
        ratios = [
            tps / d
            for r, d in zip(runs, dense_tps, strict=False)
            if d and (tps := throughput(r["metrics"]))
        ]
        stats = [routing(r) for r in runs]
        verdict = trial.get("verdict")
        mark = "" if verdict is None else "✓" if verdict["passed"] else "✗"
        p = o.get("p_value")
        rows.append(
            f"| {trial['number']} | {params} | {_state(trial, sweep)} | {_pm(o) if o.get('mean') is not None else '-'} "
            f"| {seeds or '-'} | {_f(p, '.3f')} | {_f(_mean(ratios), '.2f')} "
            f"| {_pct(_mean(_given(stats, 'dropped')), scale=100)} "
            f"| {_pct(min(_given(stats, 'final_min_use'), default=None), '.1f')} | {mark} |"
        )
    rows.append(
        f"\nΔ val CE: each seed's best validation CE minus the dense run's of the same seed; "
        f"the mean ± its standard error, * significant at {confidence_label()} (paired t-test); "
        "p its two-sided p-value. tok/s × dense: each seed's tokens/s over its dense run's "
        "(first epoch left out), averaged. dropped: the last epoch's share of assignments "
        "over capacity (mean over steps, layers and seeds); final min use: the least used "
        "expert of any layer and seed over the validation set, final model (tertiary needs "
        "5%). Verdict: the spec's three criteria over the seeds."
    )
    return "\n".join(rows)


def ranking(sweep: dict[str, Any]) -> str:
    """The trials that can be best, best first, with their intervals."""
    by_number = {t["number"]: t for t in sweep["trials"]}
    fields = _fields(sweep)
    rows = [
        f"| rank | # | params | Δ val CE ± SE | {confidence_label()} CI | significant |",
        "|---|---|---|---|---|---|",
    ]
    for place, number in enumerate(sweep.get("ranking") or [], 1):
        t = by_number[number]
        o = t["objective"]
        params = ", ".join(f"{f}={_value(t['params'][f])}" for f in fields if f in t["params"])
        ci = "-" if o.get("ci_low") is None else f"[{o['ci_low']:+.4f}, {o['ci_high']:+.4f}]"
        sig = {True: "yes", False: "no"}.get(o.get("significant"), "-")
        rows.append(f"| {place} | {number} | {params} | {_pm(o)} | {ci} | {sig} |")
    left = [t for t in sweep["trials"] if t["number"] not in (sweep.get("ranking") or [])]
    if left:
        rows.append(
            "\nNot ranked (never best): "
            + ", ".join(f"#{t['number']} ({_state(t)})" for t in left)
            + "."
        )
    return "\n".join(rows)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share the mean of their ranks
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (None with fewer than 3 pairs or a constant side)."""
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return None if not sxx or not syy else sxy / (sxx * syy) ** 0.5


def by_field(sweep: dict[str, Any]) -> str:
    """The objective of the completed trials by each field: per value of a choice (mean ±
    SE over trials, and the best), Spearman's rank correlation for a range."""
    done = [t for t in sweep["trials"] if t["objective"].get("mean") is not None]
    rows = [
        "| field | value | trials | mean Δ val CE ± SE (over trials) | best |",
        "|---|---|---|---|---|",
    ]
    for field, spec in sweep["sweep"]["space"].items():
        having = [t for t in done if field in t["params"]]
        if "choices" in spec:
            for choice in spec["choices"]:
                group = [t["objective"]["mean"] for t in having if t["params"][field] == choice]
                stats = mean_se(group)
                se = f" ± {stats['se']:.4f}" if stats.get("se") is not None else ""
                mean = "-" if stats["mean"] is None else f"{stats['mean']:+.4f}{se}"
                best = _f(min(group, default=None), "+.4f")
                rows.append(f"| {field} | {_value(choice)} | {len(group)} | {mean} | {best} |")
        else:
            rho = spearman(
                [t["params"][field] for t in having], [t["objective"]["mean"] for t in having]
            )
            rows.append(
                f"| {field} | {spec['low']:g} to {spec['high']:g}{' (log)' if spec.get('log') else ''} "
                f"| {len(having)} | Spearman ρ with the objective: {_f(rho, '+.2f')} | |"
            )
    rows.append(
        "\nOver the trials with an objective (complete or router collapsed). A choice's "
        "mean mixes whatever the other fields took in those trials; ρ > 0: larger values, "
        "worse (higher) Δ."
    )
    return "\n".join(rows)


def importance(sweep: dict[str, Any]) -> str:
    found = sweep.get("importance") or {}
    if not found:
        return "No importances (fANOVA needs at least two completed trials)."
    return "\n".join(
        ["| field | share of the objective's variance (fANOVA) |", "|---|---|"]
        + [f"| {k} | {v:.2f} |" for k, v in found.items()]
    )


def dense(sweep: dict[str, Any]) -> str:
    rows = ["| seed | best epoch | val CE | test CE | tok/s |", "|---|---|---|---|---|"]
    for run, ce in zip(sweep["dense"], _dense_ce(sweep), strict=True):
        m = run["metrics"]
        rows.append(
            f"| {run['seed']} | {m['best_epoch']} | {_f(ce, '.4f')} "
            f"| {_f(run['test']['ce_loss'], '.4f')} | {_f(throughput(m), ',.0f')} |"
        )
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        sys.exit(__doc__)
    sweep = json.loads(Path(argv[0]).read_text())
    sections = [
        ("Trials, in the order proposed", trials(sweep)),
        ("Ranking", ranking(sweep)),
        ("The objective by field", by_field(sweep)),
        ("Importance", importance(sweep)),
        ("Dense runs", dense(sweep)),
    ]
    print("\n\n".join(f"## {title}\n\n{body}" for title, body in sections))


if __name__ == "__main__":
    main(sys.argv[1:])
