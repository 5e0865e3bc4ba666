"""A run page researchers prefer to their tracker (issue 19, points 4 and 5).

- experiments.note: a researcher's free text on a run, set and cleared by
  PATCH /experiments/{id} (with its tags, the only fields that change after submission).
- workers.gpu_*: the latest NVML reading a worker took with its heartbeat while it trains
  on a GPU (utilisation %, memory used and total in bytes, power in watts, its name and
  when it was read); all null on a CPU worker or where NVML cannot be read.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite rebuilds the table for some changes: it stays AUTOINCREMENT (ids never reused)
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("gpu_name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("gpu_utilization", sa.Float(), nullable=True))
        batch.add_column(sa.Column("gpu_memory_used", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("gpu_memory_total", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("gpu_power_watts", sa.Float(), nullable=True))
        batch.add_column(sa.Column("gpu_read_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        for column in ("gpu_read_at", "gpu_power_watts", "gpu_memory_total",
                       "gpu_memory_used", "gpu_utilization", "gpu_name"):  # fmt: skip
            batch.drop_column(column)
    # SQLite rebuilds the table for some changes: it stays AUTOINCREMENT (ids never reused)
    with op.batch_alter_table("experiments", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("note")
