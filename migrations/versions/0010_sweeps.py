"""Sweeps (issue 20): a search of a design space, its trials, and which runs belong to it.

- sweeps: the SweepConfig as submitted (and its space's fields in the order given: JSONB
  keeps an object's keys in an order of its own), the base its runs share, how many trials run at
  once, its status, the best trial and each field's importance.
- sweep_trials: each trial's values, state (running, complete, pruned, failed,
  tertiary_failed, cancelled), objective over its seeds and verdict.
- experiments.sweep_id, experiments.trial_number: a sweep's runs (trial_number null: one
  of its dense baselines).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("fields", JSON, nullable=False),
        sa.Column("base", JSON, nullable=False),
        sa.Column("parallel", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("best_trial", sa.Integer(), nullable=True),
        sa.Column("importance", JSON, nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('running', 'finished', 'cancelled')", name=op.f("ck_sweeps_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_sweeps_idempotency_key")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "sweep_trials",
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("objective", JSON, nullable=True),
        sa.Column("verdict", JSON, nullable=True),
        sa.Column("pruned_at_epoch", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('running', 'complete', 'pruned', 'failed', 'tertiary_failed', 'cancelled')",
            name=op.f("ck_sweep_trials_state"),
        ),
        sa.ForeignKeyConstraint(
            ["sweep_id"], ["sweeps.id"], name=op.f("fk_sweep_trials_sweep_id_sweeps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sweep_id", "number", name=op.f("pk_sweep_trials")),
    )  # fmt: skip
    # SQLite rebuilds the table for some changes: it stays AUTOINCREMENT (ids never reused)
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("sweep_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("trial_number", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            batch.f("fk_experiments_sweep_id_sweeps"), "sweeps", ["sweep_id"], ["id"],
            ondelete="CASCADE",
        )  # fmt: skip
        batch.create_index(batch.f("ix_experiments_sweep_id"), ["sweep_id"], unique=False)


def downgrade() -> None:
    # SQLite rebuilds the table for some changes: it stays AUTOINCREMENT (ids never reused)
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_index(batch.f("ix_experiments_sweep_id"))
        batch.drop_constraint(batch.f("fk_experiments_sweep_id_sweeps"), type_="foreignkey")
        batch.drop_column("trial_number")
        batch.drop_column("sweep_id")
    op.drop_table("sweep_trials")
    op.drop_table("sweeps")
