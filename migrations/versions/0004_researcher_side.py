"""The researcher's side (issue 9): idempotent submission, tags, live progress.

- experiments.idempotency_key / studies.idempotency_key: the client's Idempotency-Key,
  unique (so concurrent duplicates of one POST store one run: the database decides), with
  request_hash, the hash of the body it came with (the same key with another body is a
  conflict, not a replay).
- experiments.published: whether the run's task reached the broker; a replay of a POST
  whose broker call is still in flight (or failed, and its rows are being taken back) is
  told to retry rather than handed a run that may vanish. Existing runs were published.
- experiments.tags: a JSON list of short labels, filterable.
- experiments.progress: the running attempt's live position (phase, epoch, step, tokens/s,
  ETA), written with the heartbeat; null once the run is finished.
- On SQLite, experiments and studies become AUTOINCREMENT tables: runs can be deleted now,
  and an id must never name a second run (Postgres sequences never reuse one anyway).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 12:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# JSONB on Postgres, JSON text elsewhere (as store.models.JSONType).
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # SQLite: rebuilt as AUTOINCREMENT tables (a rebuild is what batch mode does there anyway).
    never_reuse: dict[str, Any] = {
        "recreate": "always",
        "table_kwargs": {"sqlite_autoincrement": True},
    }
    with op.batch_alter_table("experiments", **(never_reuse if sqlite else {})) as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("published", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("tags", JSON, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("progress", JSON, nullable=True))
        batch.create_unique_constraint(op.f("uq_experiments_idempotency_key"), ["idempotency_key"])
    with op.batch_alter_table("studies", **(never_reuse if sqlite else {})) as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch.create_unique_constraint(op.f("uq_studies_idempotency_key"), ["idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.drop_constraint(op.f("uq_studies_idempotency_key"), type_="unique")
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_constraint(op.f("uq_experiments_idempotency_key"), type_="unique")
        batch.drop_column("progress")
        batch.drop_column("tags")
        batch.drop_column("published")
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
