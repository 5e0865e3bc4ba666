"""System metrics as a history (issue 28, point 5): the training process's CPU and memory,
and its GPU's utilisation, memory and power, every few seconds of each run.

- system_points: one row per reading, keyed by (experiment, the time it was read), so that
  a write tried again overwrites its own rows and a restarted run appends; a run keeps at
  most MOE_SYSTEM_POINTS_MAX of them (store.system_points thins the oldest); deleted with
  its run.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "system_points",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("t", sa.DateTime(timezone=True), nullable=False),
        sa.Column("elapsed_s", sa.Float(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("epoch", sa.Float(), nullable=True),
        sa.Column("cpu_percent", sa.Float(), nullable=True),
        sa.Column("rss_mb", sa.Float(), nullable=True),
        sa.Column("gpu_util", sa.Float(), nullable=True),
        sa.Column("gpu_mem_mb", sa.Float(), nullable=True),
        sa.Column("gpu_power_w", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["experiment_id"],
            ["experiments.id"],
            name=op.f("fk_system_points_experiment_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("experiment_id", "t", name=op.f("pk_system_points")),
    )


def downgrade() -> None:
    op.drop_table("system_points")
