"""GPU workers (issue 16): several runs per GPU, and one precision per study.

- workers.slots: the runs a worker trains at once (MOE_RUNS_PER_GPU, its Celery pool).
- experiments.precision: the precision the run trains in (bf16 or fp32), its base's
  `precision` resolved on the worker's device when it starts; null until then.
- studies.precision: the precision every member of the study trains in, fixed by the first
  member to start (so that verdicts compare like with like on a mixed pool of workers).
- experiments.oom_handbacks: times the run was handed back because the GPU it shared ran
  out of memory; not a crash (restarts), and past a cap the run fails saying so.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("slots", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("precision", sa.String(length=10), nullable=True))
        batch.add_column(
            sa.Column("oom_handbacks", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("precision", sa.String(length=10), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("precision")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("oom_handbacks")
        batch.drop_column("precision")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("slots")
