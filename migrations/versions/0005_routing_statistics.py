"""Routing statistics of the routing options (issue 11), per epoch, layer and kind.

- expert_stats.imbalance: mean over the epoch's steps of max load / mean load - 1
  (training rows), or of the whole validation pass (eval rows);
- expert_stats.max_imbalance: the worst step's (training rows);
- expert_stats.pad_ratio: the share of capacity slots left unused, over the steps
  (training rows; 0 for dropless routing);
- expert_stats.z_loss: the router z-loss (ST-MoE), unweighted, over the steps (training).
Rows written before have them null.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 13:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("imbalance", "max_imbalance", "pad_ratio", "z_loss")


def upgrade() -> None:
    with op.batch_alter_table("expert_stats") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("expert_stats") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
