"""The spec's success criteria, judged from stored results; imports no torch.

A result is what `run_single_experiment` returns: {"config", "metrics", "params"}, with
`metrics` from `Trainer.get_metrics()`. Losses compared are cross-entropies (no aux term,
no label smoothing), so runs with different regularisers compare on model quality.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .statistics import CONFIDENCE, confidence_label, mean_se, paired_t_test

GAP_REDUCTION_TARGET = 0.25  # primary: validation gap reduced by at least 25%
MIN_USAGE_TARGET = 5.0  # tertiary: every expert receives at least 5% of assignments


def _finite(values: list[float | None] | None) -> list[float]:
    # Stored metrics turn NaN/inf into null: judge what is left rather than crash.
    return [v for v in values or [] if v is not None and math.isfinite(v)]


def _best_index(metrics: Mapping[str, Any]) -> int | None:
    """Index, in the val lists, of the best epoch (the one whose weights are selected)."""
    epochs = metrics.get("val_epochs") or []
    best = metrics.get("best_epoch")
    if best is not None and best in epochs:
        return epochs.index(best)
    losses = metrics.get("val_losses") or metrics.get("val_ce_losses") or []
    finite = [(v, i) for i, v in enumerate(losses) if v is not None and math.isfinite(v)]
    return min(finite)[1] if finite else None


def best_val_loss(metrics: Mapping[str, Any]) -> float | None:
    """The validation cross-entropy of the run's best epoch (the epoch of its lowest
    validation loss: the weights early stopping keeps). Results from before the best epoch
    was recorded: the lowest validation cross-entropy."""
    if metrics.get("best_val_ce_loss") is not None:
        return metrics["best_val_ce_loss"]
    losses = _finite(metrics.get("val_ce_losses"))
    return min(losses) if losses else None


def generalisation_gap(metrics: Mapping[str, Any]) -> float | None:
    """Validation CE minus training CE at the best epoch, both in eval mode (no dropout, no
    smoothing, no capacity drops; the training CE on a fixed training subset as large as
    the validation set). None when the run has no eval-mode training CE: a training-mode
    average would flatter every regulariser, dropout above all."""
    i = _best_index(metrics)
    val, train = metrics.get("val_ce_losses") or [], metrics.get("train_eval_ce_losses") or []
    if i is None or i >= len(val) or i >= len(train):
        return None
    pair = _finite([val[i], train[i]])
    return pair[0] - pair[1] if len(pair) == 2 else None


def _counted_epochs(metrics: Mapping[str, Any]) -> list[int]:
    """0-based indices of the epochs whose speed counts: all but the first when there are
    several (the first pays for warm-up: compilation, caches, allocator), else the one."""
    n = len(metrics.get("tokens_per_sec") or [])
    return list(range(1, n)) if n > 1 else list(range(n))


def throughput(metrics: Mapping[str, Any]) -> float | None:
    """Training tokens/s of the run, its first epoch excluded when it has several (see
    _counted_epochs): the tokens of the counted epochs over their seconds, that is each
    epoch's tokens/s weighted by its steps (a step is the same number of tokens throughout
    a run), not a mean of rates."""
    speeds, steps = metrics.get("tokens_per_sec") or [], metrics.get("steps") or []
    pairs = [
        (steps[i] if i < len(steps) and steps[i] else 1, speeds[i])
        for i in _counted_epochs(metrics)
        if speeds[i] is not None and math.isfinite(speeds[i]) and speeds[i] > 0
    ]
    if not pairs:
        return None
    return sum(n for n, _ in pairs) / sum(n / tps for n, tps in pairs)


def throughput_note(metrics: Mapping[str, Any]) -> str | None:
    """Which epochs `throughput` counts, in words (None: the run has no epoch)."""
    counted = _counted_epochs(metrics)
    if not counted:
        return None
    if counted == [0]:
        return "one epoch, its warm-up (compilation, caches) included"
    epochs = "epoch 2" if len(counted) == 1 else f"epochs 2-{counted[-1] + 1}"
    return f"{epochs}, the first (warm-up: compilation, caches) excluded"


def _throughput_note(m: Mapping[str, Any], dm: Mapping[str, Any]) -> str | None:
    note, dense_note = throughput_note(m), throughput_note(dm) if dm else None
    if dense_note is None or dense_note == note:
        return note
    return f"{note}; dense run: {dense_note}"


def _timing(metrics: Mapping[str, Any]) -> dict[str, float]:
    timing = metrics.get("timing_breakdown") or {}
    totals = {phase: sum(timing.get(phase) or []) for phase in ("forward", "backward", "optimizer")}
    whole = sum(totals.values()) or 1.0
    return {
        **{f"{phase}_time": t for phase, t in totals.items()},
        **{f"{phase}_fraction": t / whole for phase, t in totals.items()},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _gap_note(gap: float | None, dense_gap: float | None, dense_given: bool) -> str | None:
    if not dense_given:
        return (
            "not judged: no dense result was given, only its loss (the gap needs the dense run's)"
        )
    if gap is None or dense_gap is None:
        who = "this run" if gap is None else "the dense run"
        return f"not judged: {who} has no eval-mode training loss at its best epoch"
    if dense_gap <= 0:
        return "not judged: the dense run shows no gap (validation CE <= training CE)"
    return None


def _primary(val_loss, dense_loss, gap, dense_gap, dense_given: bool) -> dict[str, Any]:
    """The spec's rule: lower validation loss, or a gap reduced by >= 25%."""
    note = _gap_note(gap, dense_gap, dense_given)
    reduction = (dense_gap - gap) / dense_gap if note is None else None
    beats = val_loss is not None and dense_loss is not None and val_loss < dense_loss
    gap_ok = reduction is not None and reduction >= GAP_REDUCTION_TARGET
    return {
        "passed": bool(beats or gap_ok),
        "val_loss": val_loss,
        "dense_val_loss": dense_loss,
        "val_loss_delta": None if val_loss is None or dense_loss is None else val_loss - dense_loss,
        "beats_dense_loss": beats,
        "val_gap": gap,
        "dense_val_gap": dense_gap,
        "gap_judged": note is None,
        "gap_note": note,
        "gap_reduction": reduction,
        "gap_reduced_enough": gap_ok,
    }


def _tertiary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Every expert of every MoE layer gets >= 5% of the final model's assignments, over
    the whole validation set in eval mode: what the trained router does, not the sum of an
    epoch of training steps, in which a router swinging from step to step looks balanced."""
    final = (metrics.get("eval_expert_stats_history") or [None])[-1]
    train_last = (metrics.get("expert_stats_history") or [None])[-1]
    train_layers = {s["layer"]: s for s in (train_last or {}).get("layers", [])}
    layers = []
    for s in (final or {}).get("layers", []):
        used = all(u > 0 for u in s["usage"])
        max_entropy = s.get("max_entropy") or math.log(len(s["usage"]))
        trained = train_layers.get(s["layer"], {})
        layers.append(
            {
                "layer": s["layer"],
                "all_experts_used": used,
                "min_usage": s["min_usage"],
                "max_usage": s["max_usage"],
                "entropy": s["entropy"],
                "max_entropy": max_entropy,
                "normalized_entropy": s["entropy"] / max_entropy if max_entropy else None,
                # Share of the validation assignments over the training capacity: tokens
                # that training's capacity would let skip this layer.
                "dropped": s.get("dropped"),
                "train_dropped": trained.get("dropped"),
                "train_max_step_load": trained.get("max_step_load"),
                "passed": used and s["min_usage"] >= MIN_USAGE_TARGET,
            }
        )
    tertiary = {
        "passed": bool(layers) and all(layer["passed"] for layer in layers),
        "min_usage_target": MIN_USAGE_TARGET,
        "epoch": final["epoch"] if final else None,
        "min_usage": min((layer["min_usage"] for layer in layers), default=None),
        "max_dropped": max((layer["dropped"] or 0.0 for layer in layers), default=None),
        "layers": layers,
    }
    if not layers:
        tertiary["reason"] = (
            "no expert statistics of an evaluation: the run has no MoE layers, no evaluated "
            "epoch, or was recorded before evaluations measured routing"
        )
    return tertiary


def judge(
    result: Mapping[str, Any],
    dense_result: Mapping[str, Any] | None = None,
    dense_baseline_loss: float | None = None,
) -> dict[str, Any]:
    """Verdict of one MoE run against the dense baseline (its result, or just its loss)."""
    m = result["metrics"]
    dm = dense_result["metrics"] if dense_result is not None else {}
    if dense_baseline_loss is None:
        dense_baseline_loss = best_val_loss(dm)
    if dense_baseline_loss is None:
        raise ValueError("the dense baseline has no validation loss to judge against")

    # PRIMARY - model quality: lower validation loss, or a gap reduced by >= 25%.
    primary = _primary(best_val_loss(m), dense_baseline_loss, generalisation_gap(m),
                       generalisation_gap(dm), dense_result is not None)  # fmt: skip

    # SECONDARY - performance, side by side with the dense run (reported, not judged).
    tps, dense_tps = throughput(m), throughput(dm)
    secondary = {
        "tokens_per_sec": tps,
        "dense_tokens_per_sec": dense_tps,
        "throughput_ratio": _ratio(tps, dense_tps),
        # which epochs the tokens/s count (throughput): the first is warm-up when there
        # are several
        "throughput_note": _throughput_note(m, dm),
        "params": result.get("params"),
        "active_params": result.get("active_params"),
        "dense_params": dense_result.get("params") if dense_result is not None else None,
        "timing": _timing(m),
        "dense_timing": _timing(dm) if dm else None,
    }

    # TERTIARY - expert utilisation of the trained model: every expert >= 5%.
    tertiary = _tertiary(m)
    return {
        "seeds": 1,
        "primary": primary,
        "secondary": secondary,
        "tertiary": tertiary,
        "passed": primary["passed"] and tertiary["passed"],
        "significant": None,
        "significance_note": ONE_SEED_NOTE,
    }


ONE_SEED_NOTE = (
    "one seed: significance unknown (a paired t-test needs seeds >= 2: one difference has no "
    "standard error)"
)

# ------------------------------------------------------------------ significance over seeds


def judge_seeds(
    results: list[Mapping[str, Any]], dense_results: list[Mapping[str, Any]]
) -> dict[str, Any]:
    """Verdict of one configuration over several seeds, each run paired with the dense run
    of the same seed (by position).

    `passed` applies the spec's rule to the means over seeds; `significant` is the paired
    t-test (paired_t_test, at CONFIDENCE) of the difference that decides it: the loss (lower
    loss; for a fail, a higher one), else the gap (`significance_of` names which). None with
    one seed, where `significance_note` says why. Tertiary must hold for every seed.
    """
    if not results or len(results) != len(dense_results):
        raise ValueError(
            f"{len(results)} runs and {len(dense_results)} dense runs: pair them by seed"
        )
    per_seed = [judge(r, d) for r, d in zip(results, dense_results, strict=True)]
    prim = [v["primary"] for v in per_seed]

    def avg(key: str, section: list[Mapping[str, Any]]) -> float | None:
        return mean_se([p[key] for p in section])["mean"]

    primary = _primary(avg("val_loss", prim), avg("dense_val_loss", prim),
                       avg("val_gap", prim), avg("dense_val_gap", prim), True)  # fmt: skip
    loss_delta = paired_t_test([p["val_loss_delta"] for p in prim])
    gap_delta = paired_t_test([
        None if p["val_gap"] is None or p["dense_val_gap"] is None else p["val_gap"] - p["dense_val_gap"]
        for p in prim
    ])  # fmt: skip
    # A pass on the gap alone rests on the gap; any other verdict on the loss.
    deciding = (
        "val_loss_delta" if primary["beats_dense_loss"] or not primary["passed"] else "gap_delta"
    )
    significant = (loss_delta if deciding == "val_loss_delta" else gap_delta)["significant"]
    primary.update(
        val_loss_delta=loss_delta,
        loss_significant=loss_delta["significant"],
        gap_delta=gap_delta,
        gap_significant=gap_delta["significant"],
        significance_of=deciding,
        significant=significant,  # None with one seed: no standard error
    )

    sec = [v["secondary"] for v in per_seed]
    secondary = {
        **{k: avg(k, sec) for k in ("tokens_per_sec", "dense_tokens_per_sec", "throughput_ratio")},
        # the seeds' notes, once each (they agree unless the seeds ran different epochs)
        "throughput_note": "; ".join(
            dict.fromkeys(s["throughput_note"] for s in sec if s["throughput_note"])
        )
        or None,
        "params": sec[0]["params"],
        "active_params": sec[0]["active_params"],
        "dense_params": sec[0]["dense_params"],
        "timing": sec[0]["timing"],
        "dense_timing": sec[0]["dense_timing"],
    }
    ters = [v["tertiary"] for v in per_seed]
    tertiary = {
        "passed": all(t["passed"] for t in ters),
        "min_usage_target": MIN_USAGE_TARGET,
        "min_usage": min((t["min_usage"] for t in ters if t["min_usage"] is not None), default=None),
        "max_dropped": max((t["max_dropped"] for t in ters if t["max_dropped"] is not None), default=None),
        "seeds_passed": sum(t["passed"] for t in ters),
        # the worst seed's layers: the one with the least-used expert
        "layers": min(ters, key=lambda t: math.inf if t["min_usage"] is None else t["min_usage"])["layers"],
    }  # fmt: skip
    return {
        "seeds": len(per_seed),
        "primary": primary,
        "secondary": secondary,
        "tertiary": tertiary,
        "passed": primary["passed"] and tertiary["passed"],
        "significant": significant,
        "significance_note": None
        if significant is not None
        else ONE_SEED_NOTE
        if len(per_seed) == 1
        else "significance unknown: too few seeds with a finite difference",
        "per_seed": per_seed,
    }


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
        return verdict.get("significance_note") or ONE_SEED_NOTE
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


RULES = {
    "primary": "lower validation CE than dense, or the val−train gap reduced by "
    f"≥ {100 * GAP_REDUCTION_TARGET:.0f}%",
    "secondary": "reported, not judged: speed and size beside the dense run",
    "tertiary": f"every expert of every MoE layer gets ≥ {MIN_USAGE_TARGET:.0f}% of the final "
    "model's validation assignments",
    "passed": "primary and tertiary both pass",
}
"""What each criterion asks, in words: the `rule` of its verdict line."""


def verdict_lines(verdict: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A verdict as the lines people read: one per criterion and one for the whole, each
    `{criterion, passed, summary, rule, significance}`. The one definition of what a verdict
    says: the API serves these lines (`lines`), the CLI and the dashboard print them as they
    are, and format_verdict prints them under the run's name. `passed` is None for
    secondary (reported, not judged); `significance` is the paired t-test of the deciding
    difference, on the primary line only. Verdicts stored before a field existed print
    without it."""
    p, s, t = verdict["primary"], verdict["secondary"], verdict["tertiary"]
    if p.get("gap_judged", True) and p.get("gap_reduction") is not None:
        enough = p.get("gap_reduced_enough", p["gap_reduction"] >= GAP_REDUCTION_TARGET)
        gap = f"reduced {100 * p['gap_reduction']:.1f}% ({_mark(enough)} ≥ {100 * GAP_REDUCTION_TARGET:.0f}%)"
    else:
        gap = p.get("gap_note") or "not judged"
    primary = (
        f"val CE {_num(p.get('val_loss'))} vs dense {_num(p.get('dense_val_loss'))}:"
        f" Δ {_pm(p.get('val_loss_delta'))} ({_mark(p.get('beats_dense_loss'))} lower);"
        f" gap {_num(p.get('val_gap'))} vs dense {_num(p.get('dense_val_gap'))}: {gap}"
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
    marks = f"primary {_mark(p.get('passed'))}, tertiary {_mark(t.get('passed'))}"
    seeds = verdict.get("seeds", 1)
    whole = marks + (f" ({seeds} seeds, the rule on the means)" if seeds > 1 else "")

    def line(criterion: str, passed: bool | None, summary: str, significance: str | None = None):
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
            if v["primary"].get("significance_of") == "gap_delta":
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
    by_gap = any(v["primary"].get("significance_of") == "gap_delta" for v in verdicts.values())
    rows.append(
        f"(means over {seeds} seeds; Δ paired by seed, ± its standard error; {confidence_label()} CI: Δ ± t·SE,"
        f" Student's t with n - 1 df; p: two-sided paired t-test; sig ✓: p < {1 - CONFIDENCE:.2g},"
        " the interval excludes 0"
        + ("; (gap): a pass on the gap alone, so the gap's test)" if by_gap else ")")
        if seeds > 1
        else "(one seed: no interval, significance unknown, sig ?)"
    )
    return "\n".join(rows)
