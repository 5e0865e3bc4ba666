"""Initial schema: studies, experiments, per-epoch metrics and per-layer expert stats.

Revision ID: 0001
Revises:
Create Date: 2026-11-24 22:58:59.337786
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on Postgres, JSON text elsewhere (as store.models.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("base_preset", sa.String(length=50), nullable=True),
        sa.Column("base", JSON, nullable=False),
        sa.Column("experiment_presets", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("preset", sa.String(length=50), nullable=True),
        sa.Column("base_preset", sa.String(length=50), nullable=True),
        sa.Column("dense", sa.Boolean(), nullable=False),
        sa.Column("baseline_id", sa.Integer(), nullable=True),
        sa.Column("study_id", sa.Integer(), nullable=True),
        sa.Column("config", JSON, nullable=False),
        sa.Column("base", JSON, nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("current_epoch", sa.Integer(), nullable=False),
        sa.Column("num_epochs", sa.Integer(), nullable=False),
        sa.Column("stopped_early", sa.Boolean(), nullable=False),
        sa.Column("best_val_loss", sa.Float(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("metrics", JSON, nullable=True),
        sa.Column("device", sa.String(length=50), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_experiments_status"),
        ),
        sa.ForeignKeyConstraint(
            ["baseline_id"],
            ["experiments.id"],
            name=op.f("fk_experiments_baseline_id_experiments"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_experiments_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
    )
    op.create_index(
        op.f("ix_experiments_baseline_id"), "experiments", ["baseline_id"], unique=False
    )
    op.create_index(op.f("ix_experiments_status"), "experiments", ["status"], unique=False)
    op.create_index(op.f("ix_experiments_study_id"), "experiments", ["study_id"], unique=False)
    op.create_table(
        "epoch_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=False),
        sa.Column("train_ce_loss", sa.Float(), nullable=False),
        sa.Column("train_aux_loss", sa.Float(), nullable=False),
        sa.Column("val_loss", sa.Float(), nullable=True),
        sa.Column("val_ce_loss", sa.Float(), nullable=True),
        sa.Column("val_aux_loss", sa.Float(), nullable=True),
        sa.Column("tokens_per_sec", sa.Float(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("forward_time", sa.Float(), nullable=False),
        sa.Column("backward_time", sa.Float(), nullable=False),
        sa.Column("optimizer_time", sa.Float(), nullable=False),
        sa.Column("gating_temperature", sa.Float(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_epoch_metrics_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_epoch_metrics")),
        sa.UniqueConstraint(
            "experiment_id", "epoch", name=op.f("uq_epoch_metrics_experiment_id_epoch")
        ),
    )
    op.create_table(
        "expert_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("entropy", sa.Float(), nullable=False),
        sa.Column("min_usage", sa.Float(), nullable=False),
        sa.Column("max_usage", sa.Float(), nullable=False),
        sa.Column("usage", JSON, nullable=False),
        sa.Column("dropped", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_expert_stats_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_expert_stats")),
        sa.UniqueConstraint(
            "experiment_id",
            "epoch",
            "layer",
            name=op.f("uq_expert_stats_experiment_id_epoch_layer"),
        ),
    )


def downgrade() -> None:
    op.drop_table("expert_stats")
    op.drop_table("epoch_metrics")
    op.drop_index(op.f("ix_experiments_study_id"), table_name="experiments")
    op.drop_index(op.f("ix_experiments_status"), table_name="experiments")
    op.drop_index(op.f("ix_experiments_baseline_id"), table_name="experiments")
    op.drop_table("experiments")
    op.drop_table("studies")
