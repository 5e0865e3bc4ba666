"""What a run records as it trains: a row per epoch, a step point every few steps, each
MoE layer's routing statistics per epoch, and its process's system figures every few
seconds."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from store.models.base import Base, JSONType, UTCDateTime, utcnow

if TYPE_CHECKING:
    from store.models.experiments import Experiment


class EpochMetrics(Base):
    """One row per finished epoch; a replayed epoch (after a resume) overwrites its row."""

    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("experiment_id", "epoch"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float] = mapped_column(Float)
    train_ce_loss: Mapped[float] = mapped_column(Float)
    train_aux_loss: Mapped[float] = mapped_column(Float)
    # The epoch's weights in eval mode on a fixed training subset (null: not evaluated).
    train_eval_ce_loss: Mapped[float | None] = mapped_column(Float)
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_ce_loss: Mapped[float | None] = mapped_column(Float)
    val_aux_loss: Mapped[float | None] = mapped_column(Float)
    tokens_per_sec: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    forward_time: Mapped[float] = mapped_column(Float)
    backward_time: Mapped[float] = mapped_column(Float)
    optimizer_time: Mapped[float] = mapped_column(Float)
    gating_temperature: Mapped[float | None] = mapped_column(Float)
    # Wall-clock seconds of the epoch, training and evaluation.
    duration: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    experiment: Mapped[Experiment] = relationship(back_populates="epochs")


class StepMetrics(Base):
    """A step point (moe_core.records.StepPoint), every `step_metrics_every` steps; a step
    replayed after a resume overwrites its row."""

    __tablename__ = "step_metrics"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    tokens: Mapped[int] = mapped_column(BigInteger)
    wall_time: Mapped[float] = mapped_column(Float)
    # Null: not finite (a diverging step).
    loss: Mapped[float | None] = mapped_column(Float)
    ce_loss: Mapped[float | None] = mapped_column(Float)
    aux_loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float] = mapped_column(Float)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    tokens_per_sec: Mapped[float | None] = mapped_column(Float)


class SystemPoint(Base):
    """The training process's CPU and memory (and its GPU's figures) at one moment
    (store.system_points, written by worker.system_metrics); null: not read there."""

    __tablename__ = "system_points"

    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    # When it was read: the key, so that a write tried again overwrites its own points and
    # a restarted run's attempt appends after the last one's.
    t: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    elapsed_s: Mapped[float] = mapped_column(Float)  # since the run first started
    # Where training stood: its optimizer steps done (null: not known yet, e.g. a resumed
    # run preparing its data) and its position in epochs (2.5: half-way through the third).
    step: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[float | None] = mapped_column(Float)
    cpu_percent: Mapped[float | None] = mapped_column(Float)  # 100: one core busy
    rss_mb: Mapped[float | None] = mapped_column(Float)
    gpu_util: Mapped[float | None] = mapped_column(Float)  # percent, the whole GPU's
    gpu_mem_mb: Mapped[float | None] = mapped_column(Float)
    gpu_power_w: Mapped[float | None] = mapped_column(Float)


class StatsKind(enum.StrEnum):
    train = "train"  # over the epoch's training steps, as routed while training
    eval = "eval"  # the epoch's weights over the whole validation set, in eval mode


class ExpertStats(Base):
    """Routing statistics of one MoE layer in one epoch, of one kind (StatsKind)."""

    __tablename__ = "expert_stats"
    __table_args__ = (
        UniqueConstraint("experiment_id", "epoch", "layer", "kind"),
        CheckConstraint("kind IN ('train', 'eval')", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    layer: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(10), default=StatsKind.train, server_default="train")
    entropy: Mapped[float] = mapped_column(Float)
    min_usage: Mapped[float] = mapped_column(Float)
    max_usage: Mapped[float] = mapped_column(Float)
    usage: Mapped[list[float]] = mapped_column(JSONType)
    # Training rows: the fraction of the epoch's assignments over capacity, dropped. Eval
    # rows: the fraction that the training capacity would drop (evaluation drops none).
    dropped: Mapped[float | None] = mapped_column(Float)
    # Training rows only: the largest share of one step's assignments any expert took.
    max_step_load: Mapped[float | None] = mapped_column(Float)
    # max load / mean load - 1: the mean over the steps (training), or of the whole pass
    # (eval); max_imbalance is the worst step's, pad_ratio the share of capacity slots left
    # unused, z_loss the router z-loss, unweighted (training rows).
    imbalance: Mapped[float | None] = mapped_column(Float)
    max_imbalance: Mapped[float | None] = mapped_column(Float)
    pad_ratio: Mapped[float | None] = mapped_column(Float)
    z_loss: Mapped[float | None] = mapped_column(Float)
