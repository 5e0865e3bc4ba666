"""A run (an experiment): what was asked, where it stands, its lease and its results; and
the failures of the optional sinks that mirror it."""

from __future__ import annotations

import enum
import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from store.models.base import Base, JSONType, UTCDateTime, utcnow

if TYPE_CHECKING:
    from store.models.metrics import EpochMetrics
    from store.models.studies import Study
    from store.models.workers import Worker


class Status(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = frozenset({Status.succeeded, Status.failed, Status.cancelled})


def new_run_key() -> str:
    return uuid.uuid4().hex


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name="status"
        ),
        {"sqlite_autoincrement": True},  # ids are never reused after a delete
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    preset: Mapped[str | None] = mapped_column(String(50))
    base_preset: Mapped[str | None] = mapped_column(String(50))
    dense: Mapped[bool] = mapped_column(Boolean, default=False)
    # The dense run whose results this one's verdict is judged against.
    baseline_id: Mapped[int | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL"), index=True
    )
    study_id: Mapped[int | None] = mapped_column(
        ForeignKey("studies.id", ondelete="CASCADE"), index=True
    )
    # A sweep's run: a trial's (trial_number), or a dense baseline of the sweep (null).
    sweep_id: Mapped[int | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE"), index=True
    )
    trial_number: Mapped[int | None] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    base: Mapped[dict[str, Any]] = mapped_column(JSONType)
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list, server_default="[]")
    # A researcher's note on the run; with the tags, all that changes after submission
    # (PATCH /experiments/{id}).
    note: Mapped[str | None] = mapped_column(Text)
    # The client's Idempotency-Key: unique, so that concurrent retries of one POST store one
    # run (the database decides, not a check-then-insert); request_hash is the body's hash,
    # so that the same key with another body is refused rather than answered with this run.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # Whether its task reached the broker (set right after the publish): a replay of a POST
    # still waiting on the broker is told to retry, not handed a run that may be taken back.
    published: Mapped[bool] = mapped_column(Boolean, default=False, server_default=true())

    status: Mapped[str] = mapped_column(String(20), default=Status.queued, index=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    current_epoch: Mapped[int] = mapped_column(Integer, default=0)
    # The running attempt's live position (worker.lease.Progress), written with its heartbeat
    # every few seconds; null before a worker starts it and once it is finished.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    num_epochs: Mapped[int] = mapped_column(Integer)
    stopped_early: Mapped[bool] = mapped_column(Boolean, default=False)
    # The engine's best_val_loss (CE + aux for MoE runs, CE for dense ones); runs compare on
    # best_val_ce_loss, the validation cross-entropy at the same (best) epoch.
    best_val_loss: Mapped[float | None] = mapped_column(Float)
    best_val_ce_loss: Mapped[float | None] = mapped_column(Float)
    params: Mapped[int | None] = mapped_column(BigInteger)
    # Parameters one token passes through (params for a dense run).
    active_params: Mapped[int | None] = mapped_column(BigInteger)
    # The kept weights on the test split (evaluation["test_epoch"] says whose).
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_ce_loss: Mapped[float | None] = mapped_column(Float)
    # The result's `evaluation` (how validation and test were computed), plus test_epoch and
    # test_aux_loss: with the two columns above, the result's `test` whole.
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The engine's get_metrics() output, stored when the run succeeds.
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    device: Mapped[str | None] = mapped_column(String(50))
    # Unique to this run, never reused (unlike the id after a database reset): its
    # artifacts live under it, and a checkpoint is resumed only if it names it.
    run_key: Mapped[str] = mapped_column(String(32), unique=True, default=new_run_key)
    # Who submitted it (store.models.users): only they or an admin change or delete it.
    owner: Mapped[str] = mapped_column(String(64), ForeignKey("users.name"), index=True)
    # An admin's word on the fair queue's order among equals (store.queue_order): higher first.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The lease: the owner's unique id (fencing: every write of a worker is conditional on
    # it), the Celery node it runs in, and its last heartbeat.
    worker: Mapped[str | None] = mapped_column(String(200))
    worker_name: Mapped[str | None] = mapped_column(String(200), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Times the run was started again after its worker died (lease expired, process lost);
    # past Settings.max_restarts the run fails. Handbacks (a worker told to stop) do not count.
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    handbacks: Mapped[int] = mapped_column(Integer, default=0)
    # Handbacks because the GPU it shared ran out of memory; past a cap the run fails.
    oom_handbacks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # bf16 or fp32: what it trains in, fixed when it first starts (null before).
    precision: Mapped[str | None] = mapped_column(String(10))
    # Every how many steps its worker takes a step point (step_metrics); null before.
    step_metrics_every: Mapped[int | None] = mapped_column(Integer)
    # When the run's task was last published (or, published with a delay, becomes due); a
    # run queued long after that, while a worker sat idle, lost its message and is
    # published again.
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    # The MLflow run that mirrors this one (worker.sinks, MOE_MLFLOW_TRACKING_URI): kept so
    # that an attempt after a crash, on any worker, goes on logging into the same run.
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    study: Mapped[Study | None] = relationship(back_populates="members")
    epochs: Mapped[list[EpochMetrics]] = relationship(
        back_populates="experiment",
        order_by="EpochMetrics.epoch",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    # The worker that holds (or last held) its lease, for that worker's GPU reading; loaded
    # with a list in one more query. No foreign key: workers come and go, runs stay.
    worker_row: Mapped[Worker | None] = relationship(
        primaryjoin="foreign(Experiment.worker_name) == Worker.name",
        viewonly=True,
        lazy="selectin",
    )

    @property
    def gpu(self) -> dict[str, Any] | None:
        """While it runs: its worker's latest GPU reading (null on a CPU, or once finished:
        the worker's GPU then reads for other runs)."""
        if self.status != Status.running or self.worker_row is None:
            return None
        return self.worker_row.gpu_reading()

    @property
    def tokens_per_sec(self) -> float | None:
        """Training speed: this attempt's so far while running, else the epochs' mean."""
        if self.status == Status.running and self.progress:
            return self.progress.get("tokens_per_sec")
        speeds = (self.metrics or {}).get("tokens_per_sec") or []
        return sum(speeds) / len(speeds) if speeds else None

    @property
    def summary(self) -> dict[str, Any]:
        """What a run table shows of its results (store.run_fields filters and sorts on it):
        its best and test losses, size and speed, and of its MoE layers at the last
        evaluation the smallest and largest expert's share of the assignments (%), the mean
        routing entropy over its maximum (1: uniform) and the largest dropped share, and the
        largest step load of the last trained epoch. Null where the run has none (yet)."""
        metrics = self.metrics or {}
        evaluated = _final_layers(metrics, "eval_expert_stats_history")
        trained = _final_layers(metrics, "expert_stats_history")
        return {
            "val_ce": self.best_val_ce_loss,
            "val_loss": self.best_val_loss,
            "test_ce": self.test_ce_loss,
            "test_loss": self.test_loss,
            "params": self.params,
            "active_params": self.active_params,
            "tokens_per_sec": self.tokens_per_sec,
            "best_epoch": metrics.get("best_epoch"),
            "train_ce": (metrics.get("train_ce_losses") or [None])[-1],
            "min_usage": _over(evaluated, "min_usage", min),
            "max_usage": _over(evaluated, "max_usage", max),
            "entropy": _normalized_entropy(evaluated),
            "dropped": _over(evaluated, "dropped", max),
            "max_step_load": _over(trained, "max_step_load", max),
        }


def _final_layers(metrics: dict[str, Any], history: str) -> list[dict[str, Any]]:
    final = (metrics.get(history) or [None])[-1]
    return list((final or {}).get("layers") or [])


def _over(layers: list[dict[str, Any]], key: str, how: Callable[[list[float]], float]) -> Any:
    values = [layer[key] for layer in layers if layer.get(key) is not None]
    return how(values) if values else None


def _normalized_entropy(layers: list[dict[str, Any]]) -> float | None:
    shares = []
    for layer in layers:
        most = layer.get("max_entropy") or (
            math.log(len(layer["usage"])) if layer.get("usage") else 0
        )
        if layer.get("entropy") is not None and most:
            shares.append(layer["entropy"] / most)
    return sum(shares) / len(shares) if shares else None


class SinkFailure(Base):
    """An optional sink (TensorBoard, MLflow: worker.sinks) that failed during a run's
    attempt: one row per sink and attempt, counted on /metrics. The run itself goes on."""

    __tablename__ = "sink_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    sink: Mapped[str] = mapped_column(String(20))
    error: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
