"""Honest verdicts (issue 8): expert statistics of the trained model beside the training
ones, eval-mode training CE, the numbers a verdict is traced to, and studies over seeds.

- expert_stats.kind: 'train' (over the epoch's training steps, as routed while training)
  or 'eval' (the epoch's weights over the whole validation set in eval mode); existing rows
  are training statistics. It joins the unique key, so an epoch has one row of each kind
  per layer. expert_stats.max_step_load: the largest share one expert took in one training
  step (training rows only).
- epoch_metrics.train_eval_ce_loss: the epoch's weights in eval mode on a fixed training
  subset (the gap is val CE minus this).
- experiments: best_val_ce_loss, active_params, test_loss, test_ce_loss, evaluation (how
  evaluation was done, and whose weights the test split saw).
- studies.seeds: each preset and the dense baseline run once per seed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on Postgres, JSON text elsewhere (as store.models.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("expert_stats") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=10), nullable=False, server_default="train")
        )
        batch.add_column(sa.Column("max_step_load", sa.Float(), nullable=True))
        batch.drop_constraint(op.f("uq_expert_stats_experiment_id_epoch_layer"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_expert_stats_experiment_id_epoch_layer_kind"),
            ["experiment_id", "epoch", "layer", "kind"],
        )
        batch.create_check_constraint(op.f("ck_expert_stats_kind"), "kind IN ('train', 'eval')")

    with op.batch_alter_table("epoch_metrics") as batch:
        batch.add_column(sa.Column("train_eval_ce_loss", sa.Float(), nullable=True))

    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("best_val_ce_loss", sa.Float(), nullable=True))
        batch.add_column(sa.Column("active_params", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("test_loss", sa.Float(), nullable=True))
        batch.add_column(sa.Column("test_ce_loss", sa.Float(), nullable=True))
        batch.add_column(sa.Column("evaluation", JSON, nullable=True))

    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("seeds", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("seeds")

    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("evaluation")
        batch.drop_column("test_ce_loss")
        batch.drop_column("test_loss")
        batch.drop_column("active_params")
        batch.drop_column("best_val_ce_loss")

    with op.batch_alter_table("epoch_metrics") as batch:
        batch.drop_column("train_eval_ce_loss")

    # The old key has room for one row per layer: the evaluation statistics go.
    op.execute("DELETE FROM expert_stats WHERE kind <> 'train'")
    with op.batch_alter_table("expert_stats") as batch:
        batch.drop_constraint(op.f("ck_expert_stats_kind"), type_="check")
        batch.drop_constraint(
            op.f("uq_expert_stats_experiment_id_epoch_layer_kind"), type_="unique"
        )
        batch.create_unique_constraint(
            op.f("uq_expert_stats_experiment_id_epoch_layer"), ["experiment_id", "epoch", "layer"]
        )
        batch.drop_column("max_step_load")
        batch.drop_column("kind")
