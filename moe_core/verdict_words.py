"""How a verdict reads: its lines (one per criterion, what the API serves and the CLI and the
dashboard print), the engine's printout under a run's name, and the comparison table.
Torch-free. The verdicts are moe_core.criteria's (moe_core.verdict_records); verdicts stored
before a field existed (a study's old JSON) print without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from .measures import best_val_loss, generalisation_gap, throughput
from .statistics import CONFIDENCE, confidence_label, mean_se
from .verdict_records import (
    GAP_REDUCTION_TARGET,
    MIN_USAGE_TARGET,
    VerdictLine,
    gap_outcome,
    loss_worse,
)

ONE_SEED_NOTE = (
    "one seed: significance unknown (a paired t-test needs seeds >= 2: one difference has no "
    "standard error)"
)

RULES = {
    "primary": "lower validation CE than dense, or the val−train gap reduced by "
    f"≥ {100 * GAP_REDUCTION_TARGET:.0f}%",
    "secondary": "reported, not judged: speed and size beside the dense run",
    "tertiary": f"every expert of every MoE layer gets ≥ {MIN_USAGE_TARGET:.0f}% of the final "
    "model's validation assignments",
    "passed": "primary and tertiary both pass",
}
"""What each criterion asks, in words: the `rule` of its verdict line."""


def _mark(ok: bool | None) -> str:
    return "?" if ok is None else "✓" if ok else "✗"


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _pm(stat: Any, fmt: str = "+.4f") -> str:
    """'-0.0123 ± 0.0041' from a mean_se dict; a plain number from a single value."""
    if isinstance(stat, Mapping):
        if stat["mean"] is None:
            return "n/a"
        se = "" if stat["se"] is None else f" ± {stat['se']:.4f}"
        return f"{stat['mean']:{fmt}}{se}"
    return _num(stat, fmt)


def format_p(p: float | None) -> str:
    return "n/a" if p is None else "<0.0001" if p < 0.0001 else f"{p:.4f}"


def _interval(stat: Any) -> str:
    """'[-0.0910, +0.0010]' from a paired_t_test dict; '' where there is none."""
    if not isinstance(stat, Mapping) or stat.get("ci_low") is None:
        return ""
    return f"[{stat['ci_low']:+.4f}, {stat['ci_high']:+.4f}]"


def _significance(verdict: Mapping[str, Any]) -> str:
    if verdict.get("significant") is None:
        return str(verdict.get("significance_note") or ONE_SEED_NOTE)
    seeds = verdict.get("seeds", 1)
    of = verdict["primary"].get("significance_of", "val_loss_delta")
    test = verdict["primary"][of]
    if "p_value" not in test:  # a verdict stored before the t-test (a study's old JSON)
        said = "significant" if verdict["significant"] else "NOT significant"
        return f"{said} by the rule of its time, |Δ| beyond 2 standard errors (judge_seeds again for a 95% t-test)"
    at = confidence_label(test["confidence"])
    t = "SE 0, every seed alike" if test["t"] is None else f"t = {test['t']:.2f}"
    numbers = (
        f"Δ {'val CE' if of == 'val_loss_delta' else 'gap'} {test['mean']:+.4f}, {at} CI"
        f" {_interval(test)}, paired {t} ({test['df']} df), p = {format_p(test['p_value'])}"
    )
    if verdict["significant"]:
        return f"significant at {at} over {seeds} seeds: {numbers}"
    return f"NOT significant at {at} over {seeds} seeds (the interval includes 0: seed noise): {numbers}"


def _gap_words(p: Mapping[str, Any]) -> str:
    """What became of the dense run's gap, and the spec's rule on it. A gap that changed
    sign is said to have inverted: the rule counts it as reduced by more than 100%, which
    would read as a better model than it may be."""
    if not p.get("gap_judged", True) or p.get("gap_reduction") is None:
        return str(p.get("gap_note") or "not judged")
    reduction = p["gap_reduction"]
    enough = _mark(p.get("gap_reduced_enough", reduction >= GAP_REDUCTION_TARGET))
    target = f"{100 * GAP_REDUCTION_TARGET:.0f}%"
    outcome = p.get("gap_outcome") or gap_outcome(reduction)  # a verdict stored before it
    if outcome == "inverted":
        return f"inverted, val CE below train CE ({enough} reduced ≥ {target} by the spec's rule)"
    if outcome == "closed":
        return f"closed, val CE = train CE ({enough} reduced ≥ {target} by the spec's rule)"
    if outcome == "widened":
        return f"widened {-100 * reduction:.1f}% ({enough} reduced ≥ {target})"
    return f"reduced {100 * reduction:.1f}% ({enough} ≥ {target})"


def _gap_only(p: Mapping[str, Any]) -> str:
    """A primary passed on the gap alone, said where its ✓ is: the loss it did not beat,
    and whether beyond the seeds' noise."""
    if not p.get("passed") or p.get("beats_dense_loss", True):
        return ""
    delta = p.get("val_loss_delta")
    worse = p.get("loss_worse", loss_worse(delta))  # a verdict stored before the field
    if worse is None:
        return "; ✓ by the gap rule only"
    said = f"; ✓ by the gap rule only: val CE {_pm(delta)} worse than dense"
    if worse == "beyond_noise":
        return f"{said}, beyond seed noise ({confidence_label()} CI {_interval(delta)})"
    if worse == "within_noise":
        return f"{said}, within seed noise ({confidence_label()} CI {_interval(delta)})"
    return f"{said} (one seed: no noise estimate)"


def verdict_lines(verdict: Mapping[str, Any]) -> list[VerdictLine]:
    """A verdict as the lines people read: one per criterion and one for the whole, each
    `{criterion, passed, summary, rule, significance}`. The one definition of what a verdict
    says: the API serves these lines (`lines`), the CLI and the dashboard print them as they
    are, and format_verdict prints them under the run's name. `passed` is None for
    secondary (reported, not judged); `significance` is the paired t-test of the deciding
    difference, on the primary line only. Verdicts stored before a field existed print
    without it."""
    p, s, t = verdict["primary"], verdict["secondary"], verdict["tertiary"]
    primary = (
        f"val CE {_num(p.get('val_loss'))} vs dense {_num(p.get('dense_val_loss'))}:"
        f" Δ {_pm(p.get('val_loss_delta'))} ({_mark(p.get('beats_dense_loss'))} lower);"
        f" gap {_num(p.get('val_gap'))} vs dense {_num(p.get('dense_val_gap'))}: {_gap_words(p)}"
        + _gap_only(p)
    )
    secondary = (
        f"{_num(s.get('tokens_per_sec'), ',.0f')} tok/s vs dense"
        f" {_num(s.get('dense_tokens_per_sec'), ',.0f')} (x{_num(s.get('throughput_ratio'), '.2f')}"
        + (f"; {s['throughput_note']}" if s.get("throughput_note") else "")  # which epochs
        + ")"
    )
    timing = s.get("timing") or {}
    if timing.get("forward_fraction") is not None:
        secondary += (
            f"; time fwd/bwd/opt {timing['forward_fraction']:.0%}/{timing['backward_fraction']:.0%}"
            f"/{timing['optimizer_fraction']:.0%}"
        )
    if s.get("params") is not None:
        secondary += f"; {s['params']:,} params"
        if s.get("active_params") is not None:
            secondary += f", {s['active_params']:,} active per token"
    layers = ", ".join(
        f"L{layer['layer']} min {layer['min_usage']:.1f}%"
        + (
            f" H {layer['entropy']:.2f}/{layer['max_entropy']:.2f}"
            if layer.get("entropy") is not None and layer.get("max_entropy")
            else ""
        )
        + ("" if layer.get("dropped") is None else f" over capacity {100 * layer['dropped']:.1f}%")
        for layer in t.get("layers") or []
    )
    min_usage = t.get("min_usage")
    tertiary = (
        f"min usage {'n/a' if min_usage is None else f'{min_usage:.1f}%'}: {layers}"
        if layers
        else t.get("reason") or "no expert statistics"
    )
    if t.get("seeds_passed") is not None:
        tertiary += f" (worst seed; {t['seeds_passed']} of {verdict.get('seeds', 1)} seeds pass)"
    by_gap = " (by the gap rule only)" if _gap_only(p) else ""
    marks = f"primary {_mark(p.get('passed'))}{by_gap}, tertiary {_mark(t.get('passed'))}"
    seeds = verdict.get("seeds", 1)
    whole = marks + (f" ({seeds} seeds, the rule on the means)" if seeds > 1 else "")

    Criterion = Literal["primary", "secondary", "tertiary", "passed"]

    def line(criterion: Criterion, passed: bool | None, summary: str,
             significance: str | None = None) -> VerdictLine:  # fmt: skip
        return {"criterion": criterion, "passed": passed, "summary": summary,
                "rule": RULES[criterion], "significance": significance}  # fmt: skip

    return [
        line("primary", p.get("passed"), primary, _significance(verdict)),
        line("secondary", None, secondary),
        line("tertiary", t.get("passed"), tertiary),
        line("passed", verdict.get("passed"), whole),
    ]


def format_verdict(name: str, verdict: Mapping[str, Any]) -> str:
    """The verdict_lines under the run's name, as the engine's study prints them."""
    seeds = verdict.get("seeds", 1)
    lines = [
        f"{_mark(verdict['passed'])} {name}" + (f" ({seeds} seeds, means)" if seeds > 1 else "")
    ]
    for row in verdict_lines(verdict):
        if row["criterion"] == "passed":
            continue
        mark = "·" if row["passed"] is None else _mark(row["passed"])
        lines.append(f"  {mark} {row['criterion'].upper():<9} {row['summary']}")
        if row["significance"]:
            lines.append(f"            {row['significance']}")
    return "\n".join(lines)


def _as_list(x: Any) -> list[Mapping[str, Any]]:
    return list(x) if isinstance(x, list) else [x]


def format_table(dense: Any, results: Mapping[str, Any],
                 verdicts: Mapping[str, Mapping[str, Any]]) -> str:  # fmt: skip
    """A comparison table: one row for the dense baseline, one per experiment. `dense` and
    each of `results` are a result or a list of them (one per seed): figures are means."""
    header = (
        f"{'run':<16}{'params':>11}{'active':>11}{'val ce':>9}{'Δ ± SE vs dense':>20}"
        f"{confidence_label() + ' CI of Δ':>21}{'p':>9}{'gap':>8}"
        f"{'test ce':>9}{'tok/s':>10}{'x dense':>8}{'min use':>8}  verdict"
    )
    rows = [header, "-" * len(header)]

    def row(name: str, runs: list[Mapping[str, Any]], v: Mapping[str, Any] | None) -> str:
        loss = mean_se([best_val_loss(r["metrics"]) for r in runs])["mean"]
        gap = mean_se([generalisation_gap(r["metrics"]) for r in runs])["mean"]
        tps = mean_se([throughput(r["metrics"]) for r in runs])["mean"]
        test = mean_se([(r.get("test") or {}).get("ce_loss") for r in runs])["mean"]
        active = runs[0].get("active_params")
        ratio = v["secondary"]["throughput_ratio"] if v else 1.0
        min_use = v["tertiary"]["min_usage"] if v else None
        delta, interval, p, marks = "", "", "", "baseline"
        if v:
            loss_test = v["primary"]["val_loss_delta"]  # a float in a one-seed verdict (judge)
            delta, interval = _pm(loss_test), _interval(loss_test)
            p = format_p(loss_test.get("p_value")) if interval else ""
            sig = {None: "sig ?", True: "sig ✓", False: "sig ✗"}[v.get("significant")]
            if _gap_only(v["primary"]):
                sig += " (gap)"  # a pass on the gap alone: the gap's test, not the loss's
            marks = (f"{_mark(v['passed'])} (P{_mark(v['primary']['passed'])}"
                     f" T{_mark(v['tertiary']['passed'])}) {sig}")  # fmt: skip
        return (
            f"{name:<16}{runs[0]['params']:>11,}{_num(active, ',d'):>11}{_num(loss, '.4f'):>9}{delta:>20}"
            f"{interval:>21}{p:>9}{_num(gap, '.3f'):>8}{_num(test, '.4f'):>9}{_num(tps, ',.0f'):>10}"
            f"{_num(ratio, '.2f'):>8}{_num(min_use, '.1f'):>8}  {marks}"
        )

    rows.append(row("dense", _as_list(dense), None))
    for name, r in results.items():
        rows.append(row(name, _as_list(r), verdicts.get(name)))
    seeds = max(len(_as_list(r)) for r in [dense, *results.values()])
    by_gap = any(_gap_only(v["primary"]) for v in verdicts.values())
    rows.append(
        f"(means over {seeds} seeds; Δ paired by seed, ± its standard error; {confidence_label()} CI: Δ ± t·SE,"
        f" Student's t with n - 1 df; p: two-sided paired t-test; sig ✓: p < {1 - CONFIDENCE:.2g},"
        " the interval excludes 0"
        + ("; (gap): a pass on the gap alone, so the gap's test)" if by_gap else ")")
        if seeds > 1
        else "(one seed: no interval, significance unknown, sig ?"
        + ("; (gap): a pass on the gap alone, val CE no lower than dense)" if by_gap else ")")
    )
    return "\n".join(rows)
