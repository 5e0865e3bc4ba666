"""Runs on several GPUs (issue 26): a worker's GPUs.

- workers.gpus: the GPUs a worker has (MOE_GPUS_PER_WORKER, or those it sees; on a CPU
  worker its process slots). A run on k GPUs holds k of them; /workers shows which runs
  hold how many. Workers registered before this have one.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("gpus", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("gpus")
