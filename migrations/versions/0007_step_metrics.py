"""Per-step metrics (issue 19): a point every K steps of each run.

- step_metrics: one row per point (moe_core.records.StepPoint), keyed by (experiment,
  step), so that a resumed run replaying steps overwrites its points; deleted with its run.
- experiments.step_metrics_every: K, chosen by the worker so that a run keeps at most
  ~2,000 points; null until a worker starts the run.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "step_metrics",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("wall_time", sa.Float(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("ce_loss", sa.Float(), nullable=True),
        sa.Column("aux_loss", sa.Float(), nullable=True),
        sa.Column("learning_rate", sa.Float(), nullable=False),
        sa.Column("grad_norm", sa.Float(), nullable=True),
        sa.Column("tokens_per_sec", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_step_metrics_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "step", name=op.f("pk_step_metrics")),
    )
    # SQLite rebuilds the table for some changes: it stays AUTOINCREMENT (ids never reused)
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("step_metrics_every", sa.Integer(), nullable=True))


def downgrade() -> None:
    # SQLite rebuilds the table for some changes: it stays AUTOINCREMENT (ids never reused)
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("step_metrics_every")
    op.drop_table("step_metrics")
