"""A sweep over a design space and its trials; its runs are experiments with its id."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from store.models.base import Base, JSONType, UTCDateTime, utcnow


class SweepStatus(enum.StrEnum):
    running = "running"
    finished = "finished"  # its budget of trials ended
    cancelled = "cancelled"


class TrialState(enum.StrEnum):
    running = "running"
    complete = "complete"
    pruned = "pruned"  # stopped early by the median pruner; its epochs stay
    failed = "failed"
    tertiary_failed = "tertiary_failed"  # completed, but a router collapsed: never best
    cancelled = "cancelled"


TRIAL_DONE = frozenset(TrialState) - {TrialState.running}


class Sweep(Base):
    """A search of a design space (moe_core.search.SweepConfig): one dense run per seed,
    and trials proposed by Optuna as earlier ones end, `parallel` at a time."""

    __tablename__ = "sweeps"
    __table_args__ = (
        CheckConstraint("status IN ('running', 'finished', 'cancelled')", name="status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # The SweepConfig as submitted, and the base its runs share (resolved).
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # The space's fields in the order the user gave them (JSONB reorders an object's keys).
    fields: Mapped[list[str]] = mapped_column(JSONType)
    base: Mapped[dict[str, Any]] = mapped_column(JSONType)
    parallel: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default=SweepStatus.running)
    best_trial: Mapped[int | None] = mapped_column(Integer)
    importance: Mapped[dict[str, float] | None] = mapped_column(JSONType)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Who submitted it (store.models.users): only they or an admin change or delete it.
    owner: Mapped[str] = mapped_column(String(64), ForeignKey("users.name"), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    trials: Mapped[list[SweepTrial]] = relationship(
        back_populates="sweep", order_by="SweepTrial.number", lazy="selectin",
        cascade="all, delete-orphan", passive_deletes=True,
    )  # fmt: skip


class SweepTrial(Base):
    """One point of a sweep: its values, how it ended, and (complete) its objective over
    the seeds and the spec's verdict."""

    __tablename__ = "sweep_trials"
    __table_args__ = (
        CheckConstraint(
            "state IN ('running', 'complete', 'pruned', 'failed', 'tertiary_failed', 'cancelled')",
            name="state",
        ),
    )

    sweep_id: Mapped[int] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(String(20), default=TrialState.running)
    objective: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    pruned_at_epoch: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    sweep: Mapped[Sweep] = relationship(back_populates="trials")
