"""The records a training run produces, declared once: the epoch record the Trainer hands
to `on_epoch_end`, the progress report it hands to `on_progress`, and the metrics history
`get_metrics()` returns. Torch-free: the store writes them, the API's response models are
generated from them (api/schemas.py), and the test factories build them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypedDict


class Losses(TypedDict):
    loss: float  # cross-entropy + weighted aux loss (the objective, without smoothing)
    ce_loss: float
    aux_loss: float


class TrainEvalLoss(TypedDict):
    ce_loss: float  # eval-mode CE of a fixed training subset, for the generalisation gap


class LayerRouting(TypedDict, total=False):
    """One MoE layer's routing over an epoch's training steps (`expert_stats`) or over an
    evaluation pass (`eval_expert_stats`); moe_core.routing_stats says what each means.
    The last four are training's only."""

    layer: int
    entropy: float
    max_entropy: float
    min_usage: float
    max_usage: float
    usage: list[float]
    dropped: float
    imbalance: float
    max_step_load: float
    max_imbalance: float
    pad_ratio: float
    z_loss: float


class EpochRecord(TypedDict):
    """A finished epoch, as `Trainer.train` hands it to `on_epoch_end`."""

    epoch: int  # 1-based
    model_name: str
    train: Losses  # training-mode means over the epoch's steps
    val: Losses | None  # None when the epoch was not evaluated (eval_every)
    tokens_per_sec: float
    steps: int
    forward_time: float  # seconds, summed over the epoch's steps
    backward_time: float
    optimizer_time: float
    duration: float  # wall seconds of the epoch, evaluation included
    gating_temperature: float | None  # None for a dense model
    expert_stats: list[LayerRouting]  # training routing, per MoE layer
    train_eval: TrainEvalLoss | None
    eval_expert_stats: list[LayerRouting]  # validation routing, per MoE layer
    best_val_loss: float | None
    best_val_ce_loss: float | None
    best_epoch: int | None
    patience_counter: int
    stopped_early: bool


class ProgressReport(TypedDict):
    """Where training stands, after every step and as each evaluation starts: host values
    only, so that reporting it costs no device sync."""

    phase: Literal["training", "evaluating"]
    epoch: int  # 1-based, the epoch in progress
    step: int  # steps done in this epoch
    steps_per_epoch: int
    tokens: int  # trained on in this epoch


@dataclass
class MetricsHistory:
    """Everything the Trainer keeps across epochs: the spec's histories (one entry per
    epoch; the val lists one per evaluated epoch), early stopping's state and ours beside
    them. A checkpoint stores it whole, so that a resumed run continues every list."""

    # The spec's loss tracking
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    train_ce_losses: list[float] = field(default_factory=list)
    val_ce_losses: list[float] = field(default_factory=list)
    train_aux_losses: list[float] = field(default_factory=list)
    val_aux_losses: list[float] = field(default_factory=list)
    # The spec's performance metrics and timing breakdown
    tokens_per_sec: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    current_step: int = 0
    timing_breakdown: dict[str, list[float]] = field(
        default_factory=lambda: {"forward": [], "backward": [], "optimizer": []}
    )
    # The spec's early stopping and expert statistics; per expert_stats_history entry:
    # {"epoch", "gating_temperature", "layers": [LayerRouting, ...]}
    best_val_loss: float = math.inf
    patience_counter: int = 0
    stopped_early: bool = False
    expert_stats_history: list[dict[str, Any]] = field(default_factory=list)
    # Ours: per evaluation, its epoch, the eval-mode training CE and the validation
    # routing; the best epoch and its CE; the epochs completed.
    val_epochs: list[int] = field(default_factory=list)
    train_eval_ce_losses: list[float | None] = field(default_factory=list)
    eval_expert_stats_history: list[dict[str, Any]] = field(default_factory=list)
    best_val_ce_loss: float | None = None
    best_epoch: int | None = None
    epoch: int = 0

    def metrics(self) -> dict[str, Any]:
        """`Trainer.get_metrics()`: a copy, with an unset best loss as None (JSON has no
        infinity), and without `epoch` (the length of the lists says it)."""
        out = asdict(self)  # deep: the caller cannot change the history through it
        del out["epoch"]
        out["best_val_loss"] = self.best_val_loss if math.isfinite(self.best_val_loss) else None
        return out

    def state(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MetricsHistory:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in known})


HISTORY_FIELDS = tuple(f.name for f in fields(MetricsHistory))
METRICS_KEYS = tuple(name for name in HISTORY_FIELDS if name != "epoch")
