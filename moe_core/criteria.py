"""The spec's success criteria, judged from stored results; imports no torch.

A result is what `run_single_experiment` returns: {"config", "metrics", "params"}, with
`metrics` from `Trainer.get_metrics()`. Losses compared are cross-entropies (no aux term,
no label smoothing), so runs with different regularisers compare on model quality.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

GAP_REDUCTION_TARGET = 0.25  # primary: validation gap reduced by at least 25%
MIN_USAGE_TARGET = 5.0  # tertiary: every expert receives at least 5% of assignments


def _finite(values: list[float | None] | None) -> list[float]:
    # Stored metrics turn NaN/inf into null: judge what is left rather than crash.
    return [v for v in values or [] if v is not None and math.isfinite(v)]


def best_val_loss(metrics: Mapping[str, Any]) -> float | None:
    """The best validation cross-entropy of a run (the model early stopping keeps)."""
    losses = _finite(metrics.get("val_ce_losses"))
    return min(losses) if losses else None


def generalisation_gap(metrics: Mapping[str, Any]) -> float | None:
    """val - train cross-entropy at the last epoch (the Trainer always evaluates the last)."""
    val, train = metrics.get("val_ce_losses") or [], metrics.get("train_ce_losses") or []
    if not val or not train or len(_finite([val[-1], train[-1]])) < 2:
        return None
    return val[-1] - train[-1]


def throughput(metrics: Mapping[str, Any]) -> float | None:
    """Median training tokens/s over epochs: robust to the first epoch's warm-up."""
    values = _finite(metrics.get("tokens_per_sec"))
    return statistics.median(values) if values else None


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
    val_loss = best_val_loss(m)
    gap, dense_gap = generalisation_gap(m), generalisation_gap(dm)
    gap_reduction = (
        (dense_gap - gap) / dense_gap if gap is not None and dense_gap and dense_gap > 0 else None
    )
    beats = val_loss is not None and val_loss < dense_baseline_loss
    gap_ok = gap_reduction is not None and gap_reduction >= GAP_REDUCTION_TARGET
    primary = {
        "passed": bool(beats or gap_ok),
        "val_loss": val_loss,
        "dense_val_loss": dense_baseline_loss,
        "val_loss_delta": None if val_loss is None else val_loss - dense_baseline_loss,
        "beats_dense_loss": beats,
        "val_gap": gap,
        "dense_val_gap": dense_gap,
        "gap_reduction": gap_reduction,
        "gap_reduced_enough": gap_ok,
    }

    # SECONDARY - performance, side by side with the dense run (reported, not judged).
    tps, dense_tps = throughput(m), throughput(dm)
    secondary = {
        "tokens_per_sec": tps,
        "dense_tokens_per_sec": dense_tps,
        "throughput_ratio": _ratio(tps, dense_tps),
        "params": result.get("params"),
        "dense_params": dense_result.get("params") if dense_result is not None else None,
        "timing": _timing(m),
        "dense_timing": _timing(dm) if dm else None,
    }

    # TERTIARY - expert utilisation at the last epoch: every expert used, min usage >= 5%.
    history = m.get("expert_stats_history") or []
    layers = []
    for s in history[-1]["layers"] if history else []:
        used = all(u > 0 for u in s["usage"])
        max_entropy = s.get("max_entropy") or math.log(len(s["usage"]))
        layers.append(
            {
                "layer": s["layer"],
                "all_experts_used": used,
                "min_usage": s["min_usage"],
                "max_usage": s["max_usage"],
                "entropy": s["entropy"],
                "max_entropy": max_entropy,
                "normalized_entropy": s["entropy"] / max_entropy if max_entropy else None,
                "passed": used and s["min_usage"] >= MIN_USAGE_TARGET,
            }
        )
    tertiary = {
        "passed": bool(layers) and all(layer["passed"] for layer in layers),
        "min_usage_target": MIN_USAGE_TARGET,
        "min_usage": min((layer["min_usage"] for layer in layers), default=None),
        "layers": layers,
    }
    if not layers:
        tertiary["reason"] = "no expert statistics: the run has no MoE layers or no finished epoch"

    return {
        "primary": primary,
        "secondary": secondary,
        "tertiary": tertiary,
        "passed": primary["passed"] and tertiary["passed"],
    }


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def format_verdict(name: str, verdict: Mapping[str, Any]) -> str:
    p, s, t = verdict["primary"], verdict["secondary"], verdict["tertiary"]
    lines = [f"{_mark(verdict['passed'])} {name}"]
    reduction = p["gap_reduction"]
    # No reduction to speak of when the dense run shows no gap (val <= train).
    reduction = "n/a: dense has no gap" if reduction is None else f"{100 * reduction:.1f}%"
    lines.append(
        f"  {_mark(p['passed'])} PRIMARY   val loss {_num(p['val_loss'])} vs dense {_num(p['dense_val_loss'])}"
        f" ({_mark(p['beats_dense_loss'])} lower); gap {_num(p['val_gap'])} vs dense {_num(p['dense_val_gap'])}"
        f" (reduction {reduction},"
        f" {_mark(p['gap_reduced_enough'])} >= {100 * GAP_REDUCTION_TARGET:.0f}%)"
    )
    timing = s["timing"]
    lines.append(
        f"  · SECONDARY {_num(s['tokens_per_sec'], ',.0f')} tok/s vs dense {_num(s['dense_tokens_per_sec'], ',.0f')}"
        f" (x{_num(s['throughput_ratio'], '.2f')}); time fwd/bwd/opt"
        f" {timing['forward_fraction']:.0%}/{timing['backward_fraction']:.0%}/{timing['optimizer_fraction']:.0%}"
    )
    detail = ", ".join(
        f"L{layer['layer']} min {layer['min_usage']:.1f}% H {layer['entropy']:.2f}/{layer['max_entropy']:.2f}"
        for layer in t["layers"]
    )
    lines.append(
        f"  {_mark(t['passed'])} TERTIARY  every expert >= {t['min_usage_target']:.0f}%: {detail or t.get('reason', '')}"
    )
    return "\n".join(lines)


def format_table(dense: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]],
                 verdicts: Mapping[str, Mapping[str, Any]]) -> str:  # fmt: skip
    """A comparison table: one row for the dense baseline, one per experiment."""
    header = f"{'run':<16}{'params':>11}{'val ce':>9}{'ppl':>9}{'gap':>8}{'tok/s':>10}{'x dense':>9}{'min use':>9}  verdict"
    rows = [header, "-" * len(header)]

    def row(name: str, r: Mapping[str, Any], v: Mapping[str, Any] | None) -> str:
        m = r["metrics"]
        loss, gap, tps = best_val_loss(m), generalisation_gap(m), throughput(m)
        ratio = v["secondary"]["throughput_ratio"] if v else 1.0
        min_use = v["tertiary"]["min_usage"] if v else None
        marks = "baseline"
        if v:
            marks = f"{_mark(v['passed'])} (P{_mark(v['primary']['passed'])} T{_mark(v['tertiary']['passed'])})"
        ppl = math.exp(min(loss, 50)) if loss is not None else None
        return (
            f"{name:<16}{r['params']:>11,}{_num(loss, '.4f'):>9}{_num(ppl, '.1f'):>9}{_num(gap, '.3f'):>8}"
            f"{_num(tps, ',.0f'):>10}{_num(ratio, '.2f'):>9}{_num(min_use, '.1f'):>9}  {marks}"
        )

    rows.append(row("dense", dense, None))
    for name, r in results.items():
        rows.append(row(name, r, verdicts.get(name)))
    return "\n".join(rows)
