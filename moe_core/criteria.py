"""The spec's success criteria, judged from stored results; imports no torch.

A result is what `run_single_experiment` returns: {"config", "metrics", "params"}, with
`metrics` from `Trainer.get_metrics()`. Losses compared are cross-entropies (no aux term,
no label smoothing), so runs with different regularisers compare on model quality.

Verdicts are the records of moe_core.verdict_records; how they read is
moe_core.verdict_words (its names stay importable from here, where they used to live).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from . import comparable
from .measures import best_val_loss, generalisation_gap, throughput, throughput_note
from .statistics import CONFIDENCE, mean_se, paired_t_test  # noqa: F401 (CONFIDENCE: docs cite it here)
from .verdict_records import (
    GAP_REDUCTION_TARGET,
    MIN_USAGE_TARGET,
    Primary,
    PrimaryBase,
    Secondary,
    SeedsPrimary,
    SeedsTertiary,
    SeedsVerdict,
    Tertiary,
    TertiaryLayer,
    Timing,
    Verdict,
    gap_outcome,
    loss_worse,
)

# Re-exported (`as`, so that a strict type check sees it): the wording's old home.
from .verdict_words import ONE_SEED_NOTE as ONE_SEED_NOTE
from .verdict_words import RULES as RULES
from .verdict_words import format_p as format_p
from .verdict_words import format_table as format_table
from .verdict_words import format_verdict as format_verdict
from .verdict_words import verdict_lines as verdict_lines


def _throughput_note(m: Mapping[str, Any], dm: Mapping[str, Any]) -> str | None:
    note, dense_note = throughput_note(m), throughput_note(dm) if dm else None
    if dense_note is None or dense_note == note:
        return note
    return f"{note}; dense run: {dense_note}"


def _timing(metrics: Mapping[str, Any]) -> Timing:
    timing = metrics.get("timing_breakdown") or {}
    forward, backward, optimizer = (
        float(sum(timing.get(phase) or [])) for phase in ("forward", "backward", "optimizer")
    )
    whole = forward + backward + optimizer or 1.0
    return {
        "forward_time": forward,
        "backward_time": backward,
        "optimizer_time": optimizer,
        "forward_fraction": forward / whole,
        "backward_fraction": backward / whole,
        "optimizer_fraction": optimizer / whole,
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


def _primary(
    val_loss: float | None,
    dense_loss: float | None,
    gap: float | None,
    dense_gap: float | None,
    dense_given: bool,
) -> PrimaryBase:
    """The spec's rule: lower validation loss, or a gap reduced by >= 25%. A gap that
    changes sign is, by that rule, reduced by more than 100%: it passes, and gap_outcome
    says it inverted (the wording says so)."""
    note = _gap_note(gap, dense_gap, dense_given)
    reduction = None
    if note is None and gap is not None and dense_gap is not None:
        reduction = (dense_gap - gap) / dense_gap
    beats = val_loss is not None and dense_loss is not None and val_loss < dense_loss
    gap_ok = reduction is not None and reduction >= GAP_REDUCTION_TARGET
    return {
        "passed": bool(beats or gap_ok),
        "val_loss": val_loss,
        "dense_val_loss": dense_loss,
        "beats_dense_loss": beats,
        "val_gap": gap,
        "dense_val_gap": dense_gap,
        "gap_judged": note is None,
        "gap_note": note,
        "gap_reduction": reduction,
        "gap_outcome": gap_outcome(reduction),
        "gap_reduced_enough": gap_ok,
        "loss_worse": None,  # set by the caller, who knows the difference's noise
    }


def _tertiary_layer(s: Mapping[str, Any], trained: Mapping[str, Any]) -> TertiaryLayer:
    used = all(u > 0 for u in s["usage"])
    max_entropy = s.get("max_entropy") or math.log(len(s["usage"]))
    return {
        "layer": s["layer"],
        "all_experts_used": used,
        "min_usage": s["min_usage"],
        "max_usage": s["max_usage"],
        "entropy": s["entropy"],
        "max_entropy": max_entropy,
        "normalized_entropy": s["entropy"] / max_entropy if max_entropy else None,
        # Share of the validation assignments over the training capacity: tokens that
        # training's capacity would let skip this layer.
        "dropped": s.get("dropped"),
        "train_dropped": trained.get("dropped"),
        "train_max_step_load": trained.get("max_step_load"),
        "passed": used and s["min_usage"] >= MIN_USAGE_TARGET,
    }


def _tertiary(metrics: Mapping[str, Any]) -> Tertiary:
    """Every expert of every MoE layer gets >= 5% of the final model's assignments, over
    the whole validation set in eval mode: what the trained router does, not the sum of an
    epoch of training steps, in which a router swinging from step to step looks balanced."""
    final = (metrics.get("eval_expert_stats_history") or [None])[-1]
    train_last = (metrics.get("expert_stats_history") or [None])[-1]
    train_layers = {s["layer"]: s for s in (train_last or {}).get("layers", [])}
    layers = [
        _tertiary_layer(s, train_layers.get(s["layer"], {}))
        for s in (final or {}).get("layers", [])
    ]
    return {
        "passed": bool(layers) and all(layer["passed"] for layer in layers),
        "min_usage_target": MIN_USAGE_TARGET,
        "epoch": final["epoch"] if final else None,
        "min_usage": min((layer["min_usage"] for layer in layers), default=None),
        "max_dropped": max((layer["dropped"] or 0.0 for layer in layers), default=None),
        "layers": layers,
        "reason": None
        if layers
        else "no expert statistics of an evaluation: the run has no MoE layers, no evaluated "
        "epoch, or was recorded before evaluations measured routing",
    }


def judge(
    result: Mapping[str, Any],
    dense_result: Mapping[str, Any] | None = None,
    dense_baseline_loss: float | None = None,
) -> Verdict:
    """Verdict of one MoE run against the dense baseline (its result, or just its loss).
    Raises NotComparable (a ValueError) when both results carry their base and the dense
    run's cross-entropy does not compare with this run's (moe_core.comparable)."""
    if dense_result is not None and result.get("base") and dense_result.get("base"):
        comparable.check(result["base"], dense_result["base"], "the dense baseline")
    m = result["metrics"]
    dm = dense_result["metrics"] if dense_result is not None else {}
    if dense_baseline_loss is None:
        dense_baseline_loss = best_val_loss(dm)
    if dense_baseline_loss is None:
        raise ValueError("the dense baseline has no validation loss to judge against")

    # PRIMARY - model quality: lower validation loss, or a gap reduced by >= 25%.
    val_loss = best_val_loss(m)
    delta = None if val_loss is None else val_loss - dense_baseline_loss
    primary: Primary = {
        **_primary(val_loss, dense_baseline_loss, generalisation_gap(m), generalisation_gap(dm),
                   dense_result is not None),
        "loss_worse": loss_worse(delta),  # one seed: no noise to measure it against
        "val_loss_delta": delta,
    }  # fmt: skip

    # SECONDARY - performance, side by side with the dense run (reported, not judged).
    tps, dense_tps = throughput(m), throughput(dm)
    secondary: Secondary = {
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


# ------------------------------------------------------------------ significance over seeds


def judge_seeds(
    results: Sequence[Mapping[str, Any]], dense_results: Sequence[Mapping[str, Any]]
) -> SeedsVerdict:
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
    primary = _seeds_primary([v["primary"] for v in per_seed])
    significant = primary["significant"]
    return {
        "seeds": len(per_seed),
        "primary": primary,
        "secondary": _seeds_secondary([v["secondary"] for v in per_seed]),
        "tertiary": _seeds_tertiary([v["tertiary"] for v in per_seed]),
        "passed": primary["passed"] and all(v["tertiary"]["passed"] for v in per_seed),
        "significant": significant,
        "significance_note": None
        if significant is not None
        else ONE_SEED_NOTE
        if len(per_seed) == 1
        else "significance unknown: too few seeds with a finite difference",
        "per_seed": per_seed,
    }


def _mean(values: list[Any]) -> float | None:
    return mean_se(values)["mean"]


def _seeds_primary(prim: list[Primary]) -> SeedsPrimary:
    """The spec's rule on the means; the paired t-test of the difference that decides it."""
    rule = _primary(_mean([p["val_loss"] for p in prim]), _mean([p["dense_val_loss"] for p in prim]),
                    _mean([p["val_gap"] for p in prim]), _mean([p["dense_val_gap"] for p in prim]),
                    True)  # fmt: skip
    loss_delta = paired_t_test([p["val_loss_delta"] for p in prim])
    gap_delta = paired_t_test([
        None if p["val_gap"] is None or p["dense_val_gap"] is None else p["val_gap"] - p["dense_val_gap"]
        for p in prim
    ])  # fmt: skip
    # A pass on the gap alone rests on the gap; any other verdict on the loss.
    deciding: Literal["val_loss_delta", "gap_delta"] = (
        "val_loss_delta" if rule["beats_dense_loss"] or not rule["passed"] else "gap_delta"
    )
    significant = (loss_delta if deciding == "val_loss_delta" else gap_delta)["significant"]
    return {
        **rule,
        "loss_worse": loss_worse(loss_delta),  # beyond noise: its interval above 0
        "val_loss_delta": loss_delta,
        "loss_significant": loss_delta["significant"],
        "gap_delta": gap_delta,
        "gap_significant": gap_delta["significant"],
        "significance_of": deciding,
        "significant": significant,  # None with one seed: no standard error
    }


def _seeds_secondary(sec: list[Secondary]) -> Secondary:
    return {
        "tokens_per_sec": _mean([s["tokens_per_sec"] for s in sec]),
        "dense_tokens_per_sec": _mean([s["dense_tokens_per_sec"] for s in sec]),
        "throughput_ratio": _mean([s["throughput_ratio"] for s in sec]),
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


def _seeds_tertiary(ters: list[Tertiary]) -> SeedsTertiary:
    # the worst seed: the one with the least-used expert
    worst = min(ters, key=lambda t: math.inf if t["min_usage"] is None else t["min_usage"])
    return {
        "passed": all(t["passed"] for t in ters),
        "min_usage_target": MIN_USAGE_TARGET,
        "min_usage": min((t["min_usage"] for t in ters if t["min_usage"] is not None), default=None),
        "max_dropped": max((t["max_dropped"] for t in ters if t["max_dropped"] is not None), default=None),
        "seeds_passed": sum(t["passed"] for t in ters),
        "layers": worst["layers"],
        "reason": worst["reason"],
    }  # fmt: skip
