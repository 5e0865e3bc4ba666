"""The audit trail: every change (a submission, cancel, delete, label or priority change, a
user's or a token's) recorded with who, when and what, in the change's own transaction, so
that a change is never without its record nor a record without its change. Never a token's
secret: a token is named by its id and name."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.models import AuditEvent


def record(
    *, session: Session, actor: str, action: str, target: str, detail: dict[str, Any] | None = None
) -> None:
    """Add the event to the session (the caller's commit writes it with the change)."""
    session.add(AuditEvent(actor=actor, action=action, target=target, detail=detail))


def events(*, session: Session, limit: int, offset: int) -> tuple[list[AuditEvent], int]:
    """The newest first, and how many there are."""
    rows = list(session.scalars(
        select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
    ))  # fmt: skip
    return rows, session.scalar(select(func.count()).select_from(AuditEvent)) or 0
