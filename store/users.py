"""Users, their API tokens, and what each one holds now (for quotas and the fair queue).

A token's secret is `moe_` and 32 random bytes (URL-safe base64): shown once, by
`create_token`, and kept only as its SHA-256, which is what a request's token is looked up
by. Verification is one indexed read per request, so a revoked or expired token, or a
disabled user, is refused at the next request: nothing caches a yes.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from store.models import ApiToken, Experiment, Role, Status, User, utcnow
from store.workers import run_gpus

TOKEN_PREFIX = "moe_"
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # lower case: one name, one person
# A token's last use is written at most this often: not a write per request.
LAST_USED_EVERY = timedelta(seconds=60)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_user(
    *, session: Session, name: str, role: Role, max_queued_runs: int | None = None,
    max_gpus: int | None = None,
) -> User:  # fmt: skip
    """Add a user (flushed, not committed); IntegrityError when the name is taken."""
    user = User(name=name, role=role, disabled=False, max_queued_runs=max_queued_runs,
                max_gpus=max_gpus)  # fmt: skip
    session.add(user)
    session.flush()
    return user


def get_user(*, session: Session, name: str) -> User | None:
    return session.scalar(select(User).where(User.name == name))


def list_users(*, session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.name)))


def create_token(
    *, session: Session, user: User, name: str, expires_at: datetime | None
) -> tuple[ApiToken, str]:
    """A new token of `user` (flushed, not committed) and its secret, which is never
    stored: the caller shows it once."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(user_id=user.id, name=name, digest=digest(secret), expires_at=expires_at)
    session.add(token)
    session.flush()
    return token, secret


def list_tokens(*, session: Session, user: User) -> list[ApiToken]:
    return list(session.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)
    ))  # fmt: skip


def revoke_token(*, session: Session, user: User, token_id: int) -> ApiToken | None:
    """Revoke one of `user`'s tokens (flushed); None when it has no such token. Revoking a
    revoked token keeps its first revocation time."""
    token = session.get(ApiToken, token_id)
    if token is None or token.user_id != user.id:
        return None
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()
    return token


class Refusal(enum.StrEnum):
    unknown = "unknown token"
    revoked = "revoked token"
    expired = "expired token"
    disabled = "disabled user"


def authenticate(*, session: Session, secret: str) -> User | Refusal:
    """The user a token's secret belongs to, or why it is refused. Records the token's use
    (committed) at most once a minute."""
    if not secret.startswith(TOKEN_PREFIX):
        return Refusal.unknown
    row = session.execute(
        select(ApiToken, User).join(User, User.id == ApiToken.user_id)
        .where(ApiToken.digest == digest(secret))
    ).one_or_none()  # fmt: skip
    if row is None:
        return Refusal.unknown
    token, user = row
    now = utcnow()
    if token.revoked_at is not None:
        return Refusal.revoked
    if token.expires_at is not None and token.expires_at <= now:
        return Refusal.expired
    if user.disabled:
        return Refusal.disabled
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
        session.execute(update(ApiToken).where(ApiToken.id == token.id).values(last_used_at=now))
        session.commit()
    return user


@dataclass(frozen=True)
class Usage:
    queued_runs: int
    gpus_in_use: int


def usage(*, session: Session, owner: str) -> Usage:
    """What `owner` holds now: runs waiting in the queue, GPUs its running runs hold."""
    queued = session.scalar(
        select(func.count()).where(Experiment.owner == owner, Experiment.status == Status.queued)
    )
    gpus = session.scalar(
        select(func.coalesce(func.sum(run_gpus()), 0))
        .where(Experiment.owner == owner, Experiment.status == Status.running)
    )  # fmt: skip
    return Usage(int(queued or 0), int(gpus or 0))
