"""Teams on one service (issue 27): users, their API tokens, ownership, the audit trail.

- users: a name, a role (admin, member, viewer), disabled, per-user quotas (null: the
  deployment's defaults). The bootstrap admin, `admin`, is made here: MOE_API_TOKEN is
  theirs, so an existing deployment upgrades with no step.
- api_tokens: named, stored as a SHA-256 only, with an optional expiry, a last use and a
  revocation time.
- audit_events: who changed what, when.
- experiments.owner, studies.owner, sweeps.owner: who submitted it; every existing row
  is the bootstrap admin's. experiments.priority: an admin's word in the fair queue.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 14:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BOOTSTRAP_ADMIN = "admin"  # store.models.users.BOOTSTRAP_ADMIN, as it was when this was written
OWNED = ("experiments", "studies", "sweeps")


def upgrade() -> None:
    users = op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("disabled", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("max_queued_runs", sa.Integer(), nullable=True),
        sa.Column("max_gpus", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'member', 'viewer')", name=op.f("ck_users_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
        sqlite_autoincrement=True,
    )
    op.bulk_insert(users, [{"name": BOOTSTRAP_ADMIN, "role": "admin", "disabled": False,
                            "created_at": datetime.now(UTC)}])  # fmt: skip
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("digest", name=op.f("uq_api_tokens_digest")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"], unique=False)
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=100), nullable=False),
        sa.Column(
            "detail",
            sa.JSON().with_variant(sa.dialects.postgresql.JSONB(), "postgresql"),
            nullable=True,
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_audit_events_at"), "audit_events", ["at"], unique=False)
    for table in OWNED:
        # SQLite rebuilds the table: it stays AUTOINCREMENT (ids never reused)
        with op.batch_alter_table(table, table_kwargs={"sqlite_autoincrement": True}) as batch:
            # every run, study and sweep stored so far is the bootstrap admin's
            batch.add_column(sa.Column("owner", sa.String(length=64),
                                       server_default=BOOTSTRAP_ADMIN, nullable=False))  # fmt: skip
            if table == "experiments":
                batch.add_column(
                    sa.Column("priority", sa.Integer(), server_default="0", nullable=False)
                )
        with op.batch_alter_table(table, table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.alter_column("owner", server_default=None)  # a new row names its owner
            batch.create_index(op.f(f"ix_{table}_owner"), ["owner"], unique=False)
            batch.create_foreign_key(op.f(f"fk_{table}_owner_users"), "users", ["owner"], ["name"])


def downgrade() -> None:
    for table in OWNED:
        with op.batch_alter_table(table, table_kwargs={"sqlite_autoincrement": True}) as batch:
            batch.drop_constraint(op.f(f"fk_{table}_owner_users"), type_="foreignkey")
            batch.drop_index(op.f(f"ix_{table}_owner"))
            batch.drop_column("owner")
            if table == "experiments":
                batch.drop_column("priority")
    op.drop_index(op.f("ix_audit_events_at"), table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index(op.f("ix_api_tokens_user_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("users")
