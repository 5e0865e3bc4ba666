"""The records a training run produces, declared once: the epoch record the Trainer hands
to `on_epoch_end` (its figures, EpochFigures, are what the store keeps and the API serves),
the progress report it hands to `on_progress`, the step points it hands to `on_steps`, and
the metrics history `get_metrics()` returns. Torch-free: the Trainer builds them,
store.results keeps them in columns (its columns follow these keys), the API serves them as
they are declared here (descriptions included), and the test factories build them; tests/moe_core/test_records.py holds every
one of those to these keys.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar, overload

from pydantic import Field
from typing_extensions import TypedDict  # pydantic reads it on Python < 3.12 too


class Losses(TypedDict):
    loss: Annotated[float | None, Field(description="cross-entropy + weighted aux loss")]
    ce_loss: Annotated[float | None, Field(description="cross-entropy, without smoothing")]
    aux_loss: Annotated[float | None, Field(description="the weighted aux loss")]


class TrainEvalLoss(TypedDict):
    ce_loss: Annotated[float | None, Field(description="eval-mode cross-entropy")]


class EvalLayerRouting(TypedDict):
    """One MoE layer's routing over the whole validation set, in eval mode
    (moe_core.routing_stats says how each figure is made)."""

    layer: int
    entropy: Annotated[float | None, Field(description="nats, unnormalised")]
    max_entropy: Annotated[float, Field(description="ln(experts): the entropy of perfect balance")]
    min_usage: Annotated[float, Field(description="percent of the assignments")]
    max_usage: Annotated[float, Field(description="percent of the assignments")]
    usage: Annotated[list[float], Field(description="percent of the assignments, per expert")]
    dropped: Annotated[
        float | None,
        Field(
            description="share of the assignments over the training capacity (per batch of the "
            "run's batch size): what training would drop at this routing; evaluation drops none"
            " (in a training row: the share of the epoch's assignments dropped)"
        ),
    ]
    imbalance: Annotated[
        float | None,
        Field(
            description="max load / mean load - 1 (0: perfectly even): of the whole pass (in a "
            "training row: averaged over the epoch's steps); null in rows kept before it was"
        ),
    ]


class LayerRouting(EvalLayerRouting):
    """One MoE layer's routing over the epoch's training steps, as routed during training."""

    max_step_load: Annotated[
        float | None,
        Field(
            description="percent: the largest share of one step's assignments that any expert took"
        ),
    ]
    max_imbalance: Annotated[float | None, Field(description="the worst step's imbalance")]
    pad_ratio: Annotated[
        float | None, Field(description="share of the capacity slots left unused (0 when dropless)")
    ]
    z_loss: Annotated[
        float | None,
        Field(description="the router z-loss (ST-MoE), unweighted, averaged over the steps"),
    ]


class EpochFigures(TypedDict):
    """A finished epoch's figures: what the store keeps of each epoch and the API serves
    (GET /experiments/{id}/metrics, the event stream's `epoch` events)."""

    epoch: Annotated[int, Field(description="from 1")]
    train: Annotated[Losses, Field(description="averaged over the epoch's steps, in training mode")]
    train_eval: Annotated[
        TrainEvalLoss | None,
        Field(
            description="the epoch's weights in eval mode on a fixed training subset as large as "
            "the validation set (null: not evaluated); the gap is val.ce_loss - this"
        ),
    ]
    val: Annotated[
        Losses | None,
        Field(description="the validation set, in eval mode (null: not evaluated, eval_every)"),
    ]
    tokens_per_sec: float
    steps: int
    forward_time: Annotated[float, Field(description="seconds, summed over the epoch's steps")]
    backward_time: Annotated[float, Field(description="seconds")]
    optimizer_time: Annotated[float, Field(description="seconds")]
    duration: Annotated[
        float | None, Field(description="wall-clock seconds, training and evaluation")
    ]
    gating_temperature: Annotated[float | None, Field(description="null for a dense model")]
    expert_stats: Annotated[
        list[LayerRouting],
        Field(description="over the epoch's training steps, as routed during training"),
    ]
    eval_expert_stats: Annotated[
        list[EvalLayerRouting],
        Field(
            description="the epoch's weights over the whole validation set in eval mode; dropped "
            "= share of assignments over the training capacity"
        ),
    ]


class EpochRecord(EpochFigures):
    """A finished epoch, as `Trainer.train` hands it to `on_epoch_end`: its figures and the
    run's state after it (which the store keeps on the run, not the epoch)."""

    model_name: str
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


class StepPoint(TypedDict):
    """One training step's figures, taken every `every` steps (step_metrics_every): what
    `Trainer.on_steps` receives, the store keeps (step_metrics) and the API serves
    (GET /experiments/{id}/steps, the event stream's `steps` events)."""

    step: Annotated[
        int, Field(description="the run's optimizer steps after this one, from 1, across epochs")
    ]
    epoch: Annotated[int, Field(description="from 1")]
    tokens: Annotated[int, Field(description="training tokens seen by the run so far")]
    wall_time: Annotated[
        float, Field(description="seconds of training since the run started (evaluation excluded)")
    ]
    loss: Annotated[float | None, Field(description="this step's objective")]
    ce_loss: Annotated[float | None, Field(description="this step's cross-entropy")]
    aux_loss: Annotated[float | None, Field(description="this step's weighted aux loss")]
    learning_rate: float
    grad_norm: Annotated[
        float | None,
        Field(description="the total gradient norm that clipping computed, before clipping"),
    ]
    tokens_per_sec: Annotated[
        float | None, Field(description="training tokens/s since the previous point")
    ]


# A run keeps at most about this many step points, whatever its length.
MAX_STEP_POINTS = 2000


def step_metrics_every(total_steps: int, max_points: int = MAX_STEP_POINTS) -> int:
    """Every how many steps a run of `total_steps` takes a point, to keep <= max_points."""
    return max(1, math.ceil(total_steps / max_points))


def keys(record_type: type) -> tuple[str, ...]:
    """A record type's keys, inherited ones first, in declaration order."""
    return tuple(record_type.__annotations__)


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

    def add_training(self, stats: dict[str, float], steps: int) -> None:
        """A trained epoch's figures: `stats` has Trainer.train_epoch's keys."""
        self.train_losses.append(stats["loss"])
        self.train_ce_losses.append(stats["ce_loss"])
        self.train_aux_losses.append(stats["aux_loss"])
        self.tokens_per_sec.append(stats["tokens_per_sec"])
        self.steps.append(steps)
        for phase, times in self.timing_breakdown.items():
            times.append(stats[f"{phase}_time"])

    def add_evaluation(self, epoch: int, val: dict[str, float], train_ce: float | None,
                       layers: list[EvalLayerRouting] | None) -> None:  # fmt: skip
        """An evaluation of `epoch`'s weights: the validation losses, the eval-mode training
        CE (None: not measured) and the validation routing (None: a dense model)."""
        self.val_losses.append(val["loss"])
        self.val_ce_losses.append(val["ce_loss"])
        self.val_aux_losses.append(val["aux_loss"])
        self.val_epochs.append(epoch)
        self.train_eval_ce_losses.append(train_ce)
        if layers is not None:
            self.eval_expert_stats_history.append({"epoch": epoch, "layers": layers})

    def judge(self, val: dict[str, float], epoch: int, patience: int) -> bool:
        """Early stopping, after an evaluation of `epoch`: True when it is the best so far;
        stopped once `patience` (0: never) evaluations in a row were not."""
        if val["loss"] < self.best_val_loss:
            self.best_val_loss, self.best_val_ce_loss = val["loss"], val["ce_loss"]
            self.best_epoch, self.patience_counter = epoch, 0
            return True
        self.patience_counter += 1
        if patience > 0 and self.patience_counter >= patience:
            self.stopped_early = True
        return False

    def finish_epoch(self, train: dict[str, float], val: dict[str, float] | None, *,
                     model_name: str, layers: list[LayerRouting] | None, duration: float,
                     gating_temperature: float | None) -> EpochRecord:  # fmt: skip
        """Close the epoch after the last one completed, its training (`train`, already
        added) and evaluation (`val`, None: not evaluated) done: its routing in training
        (`layers`, None: a dense model) joins the history; returns its record."""
        self.epoch += 1
        if layers is not None:
            self.expert_stats_history.append({"epoch": self.epoch, "layers": layers,
                                              "gating_temperature": gating_temperature})  # fmt: skip
        evaluated = val is not None
        train_ce = self.train_eval_ce_losses[-1] if evaluated else None
        return {
            "epoch": self.epoch,
            "model_name": model_name,
            "train": _losses(train),
            "val": _losses(val) if val is not None else None,
            "tokens_per_sec": train["tokens_per_sec"],
            "steps": self.steps[-1],
            "forward_time": train["forward_time"],
            "backward_time": train["backward_time"],
            "optimizer_time": train["optimizer_time"],
            "duration": duration,
            "gating_temperature": gating_temperature,
            "expert_stats": layers or [],
            "train_eval": {"ce_loss": train_ce} if train_ce is not None else None,
            "eval_expert_stats": self.eval_expert_stats_history[-1]["layers"]
            if evaluated and layers is not None
            else [],
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "best_val_ce_loss": self.best_val_ce_loss,
            "best_epoch": self.best_epoch,
            "patience_counter": self.patience_counter,
            "stopped_early": self.stopped_early,
        }

    def state(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MetricsHistory:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in known})


def _losses(figures: dict[str, float]) -> Losses:
    """The three losses of a training or evaluation pass's figures."""
    return {"loss": figures["loss"], "ce_loss": figures["ce_loss"], "aux_loss": figures["aux_loss"]}


class _HasHistory(Protocol):
    history: MetricsHistory


T = TypeVar("T")


class HistoryField(Generic[T]):
    """An attribute that is the field of the same name of its owner's `history`, read and
    written through: the Trainer's spec attributes (one object holds them, which a
    checkpoint stores whole)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, owner: None, owner_type: type) -> HistoryField[T]: ...
    @overload
    def __get__(self, owner: _HasHistory, owner_type: type) -> T: ...
    def __get__(self, owner: _HasHistory | None, owner_type: type) -> T | HistoryField[T]:
        return self if owner is None else getattr(owner.history, self.name)

    def __set__(self, owner: _HasHistory, value: T) -> None:
        setattr(owner.history, self.name, value)


HISTORY_FIELDS = tuple(f.name for f in fields(MetricsHistory))
METRICS_KEYS = tuple(name for name in HISTORY_FIELDS if name != "epoch")
