"""What the criteria measure in a stored run: its best validation CE, its generalisation
gap, its throughput. Torch-free. A run's `metrics` are `Trainer.get_metrics()`, stored: NaN
and infinity kept as null. moe_core.criteria judges with these; moe_core.verdict_words
tabulates with them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _finite(values: list[float | None] | None) -> list[float]:
    # Stored metrics turn NaN/inf into null: judge what is left rather than crash.
    return [v for v in values or [] if v is not None and math.isfinite(v)]


def _best_index(metrics: Mapping[str, Any]) -> int | None:
    """Index, in the val lists, of the best epoch (the one whose weights are selected)."""
    epochs = metrics.get("val_epochs") or []
    best = metrics.get("best_epoch")
    if best is not None and best in epochs:
        return int(epochs.index(best))
    losses = metrics.get("val_losses") or metrics.get("val_ce_losses") or []
    found = [(v, i) for i, v in enumerate(losses) if v is not None and math.isfinite(v)]
    return min(found)[1] if found else None


def best_val_loss(metrics: Mapping[str, Any]) -> float | None:
    """The validation cross-entropy of the run's best epoch (the epoch of its lowest
    validation loss: the weights early stopping keeps). Results from before the best epoch
    was recorded: the lowest validation cross-entropy."""
    if metrics.get("best_val_ce_loss") is not None:
        return float(metrics["best_val_ce_loss"])
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
    return float(sum(n for n, _ in pairs) / sum(n / tps for n, tps in pairs))


def throughput_note(metrics: Mapping[str, Any]) -> str | None:
    """Which epochs `throughput` counts, in words (None: the run has no epoch)."""
    counted = _counted_epochs(metrics)
    if not counted:
        return None
    if counted == [0]:
        return "one epoch, its warm-up (compilation, caches) included"
    epochs = "epoch 2" if len(counted) == 1 else f"epochs 2-{counted[-1] + 1}"
    return f"{epochs}, the first (warm-up: compilation, caches) excluded"
