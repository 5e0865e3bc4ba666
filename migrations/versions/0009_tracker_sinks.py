"""Researchers' own tools fed (issue 19, point 7): the optional TensorBoard and MLflow sinks.

- experiments.mlflow_run_id: the MLflow run that mirrors the run, so that an attempt after a
  crash (another worker, same experiment) goes on logging into the same MLflow run.
- sink_failures: one row per sink that failed during an attempt (the run goes on); /metrics
  counts them as moe_sink_failures_total{sink=...}.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite rebuilds the table for some changes: it stays AUTOINCREMENT (ids never reused)
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("mlflow_run_id", sa.String(length=64), nullable=True))
    op.create_table(
        "sink_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("sink", sa.String(length=20), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_sink_failures_experiment_id_experiments"),
            ondelete="CASCADE",
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sink_failures")),
    )
    op.create_index(
        op.f("ix_sink_failures_experiment_id"), "sink_failures", ["experiment_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sink_failures_experiment_id"), table_name="sink_failures")
    op.drop_table("sink_failures")
    # SQLite rebuilds the table for some changes: it stays AUTOINCREMENT (ids never reused)
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("mlflow_run_id")
