"""Leases that the service acts on: a run key per run, restart and handback counts, the
time a run was last published, the owner's worker node; the worker registry; epoch time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 07:30:00
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("run_key", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("worker_name", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("handbacks", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))

    # Existing runs get keys of their own (their old artifacts, keyed by id, are not resumed).
    experiments = sa.table("experiments", sa.column("id", sa.Integer), sa.column("run_key"))
    connection = op.get_bind()
    for (experiment_id,) in connection.execute(sa.select(experiments.c.id)).all():
        connection.execute(
            experiments.update()
            .where(experiments.c.id == experiment_id)
            .values(run_key=uuid.uuid4().hex)
        )

    with op.batch_alter_table("experiments") as batch:
        batch.alter_column("run_key", existing_type=sa.String(length=32), nullable=False)
        batch.alter_column("restarts", server_default=None)
        batch.alter_column("handbacks", server_default=None)
        batch.create_unique_constraint(op.f("uq_experiments_run_key"), ["run_key"])
        batch.create_index(op.f("ix_experiments_worker_name"), ["worker_name"], unique=False)

    with op.batch_alter_table("epoch_metrics") as batch:
        batch.add_column(sa.Column("duration", sa.Float(), nullable=True))

    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(length=50), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("idle_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopping", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_heartbeat_at"), "workers", ["heartbeat_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_workers_heartbeat_at"), table_name="workers")
    op.drop_table("workers")
    with op.batch_alter_table("epoch_metrics") as batch:
        batch.drop_column("duration")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_index(op.f("ix_experiments_worker_name"))
        batch.drop_constraint(op.f("uq_experiments_run_key"), type_="unique")
        batch.drop_column("queued_at")
        batch.drop_column("handbacks")
        batch.drop_column("restarts")
        batch.drop_column("worker_name")
        batch.drop_column("run_key")
