"""The people of a lab and their API tokens, and the trail of every change they made.

A token is stored only as its SHA-256: the secret is shown once, when it is made, and a
database dump gives no one a way in. Users are disabled, never deleted: their runs keep
their owner, and the audit trail its actors.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from store.models.base import Base, JSONType, UTCDateTime, utcnow


class Role(enum.StrEnum):
    admin = "admin"  # everything, and manages users
    member = "member"  # submits; changes and deletes their own work; reads everyone's
    viewer = "viewer"  # reads


# The user every existing deployment has: MOE_API_TOKEN is theirs, runs stored before users
# existed are theirs (migration 0012), and an open deployment (no MOE_API_TOKEN) acts as them.
BOOTSTRAP_ADMIN = "admin"


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'member', 'viewer')", name="role"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(10))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Quotas an admin sets; null: the deployment's defaults (MOE_MAX_QUEUED_RUNS_PER_USER,
    # MOE_MAX_GPUS_PER_USER).
    max_queued_runs: Mapped[int | None] = mapped_column(Integer)
    max_gpus: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    __table_args__ = {"sqlite_autoincrement": True}  # an id revoked is never another's

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the secret, hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """A change: who (the user's name), when, what (an action and its target), and the
    change's own fields. Never a token's secret."""

    __tablename__ = "audit_events"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str] = mapped_column(String(100))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
