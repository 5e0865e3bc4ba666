"""The tables of the store of record. The schema is made by the Alembic migrations only."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_run_key() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime, on SQLite too (which stores it without a zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC one")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# JSONB on Postgres (indexable, compact); plain JSON (text) on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")

# Stable constraint names, so that migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Status(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = frozenset({Status.succeeded, Status.failed, Status.cancelled})


class Study(Base):
    """The spec's main(): a dense baseline plus experiments judged against it."""

    __tablename__ = "studies"
    # SQLite: ids are never reused after a delete (Postgres sequences never reuse one).
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    base_preset: Mapped[str | None] = mapped_column(String(50))
    base: Mapped[dict[str, Any]] = mapped_column(JSONType)
    experiment_presets: Mapped[list[str]] = mapped_column(JSONType)
    # Each preset and the dense baseline run once per seed: base.seed, base.seed + 1, ...
    seeds: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # bf16 or fp32 for every member: the base's, or (precision auto) what the first member
    # to start resolved on its device, so that verdicts compare like with like.
    precision: Mapped[str | None] = mapped_column(String(10))
    # The client's Idempotency-Key and the hash of the body it came with (see Experiment).
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    members: Mapped[list[Experiment]] = relationship(
        back_populates="study", order_by="Experiment.id", lazy="selectin"
    )


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


class Worker(Base):
    """A worker process (one per GPU), registered while it lives: its main process writes a
    heartbeat whether or not it trains. Which run it trains is the run's `worker_name`."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)  # the Celery node name
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(50))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Since when it has had a slot free (with one slot: held no run); null while every slot
    # trains. A run left queued that long beside it lost its message (store.leases.republish_due).
    idle_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Told to stop (SIGTERM): it hands its run back and takes no other.
    stopping: Mapped[bool] = mapped_column(Boolean, default=False)
    # Runs it trains at once on its one device (MOE_RUNS_PER_GPU: its Celery pool's size).
    slots: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # The latest NVML reading of its GPU, taken with the heartbeat (worker.gpu_telemetry);
    # all null on a CPU worker, or where NVML could not be read: absent, never zero.
    gpu_name: Mapped[str | None] = mapped_column(String(200))
    gpu_utilization: Mapped[float | None] = mapped_column(Float)  # percent, over NVML's window
    gpu_memory_used: Mapped[int | None] = mapped_column(BigInteger)  # bytes
    gpu_memory_total: Mapped[int | None] = mapped_column(BigInteger)  # bytes
    gpu_power_watts: Mapped[float | None] = mapped_column(Float)
    gpu_read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def gpu_reading(self) -> dict[str, Any] | None:
        """The reading as the API shows it, or None when there is none."""
        if self.gpu_read_at is None:
            return None
        return {
            "name": self.gpu_name,
            "utilization": self.gpu_utilization,
            "memory_used": self.gpu_memory_used,
            "memory_total": self.gpu_memory_total,
            "power_watts": self.gpu_power_watts,
            "read_at": self.gpu_read_at,
        }


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
