"""Per-user quotas at submission: runs waiting in the queue (store.users.usage). Over the
limit a submission is a 429 naming the limit and the user's count, before anything is
stored. (GPUs in use are not refused here: a run past its owner's GPU quota waits in the
queue, store.queue_order.)"""

from __future__ import annotations

from fastapi import HTTPException, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Caller
from store import users
from store.models import User
from store.settings import Settings


def queued_limit(user: User | None, settings: Settings) -> int | None:
    if user is not None and user.max_queued_runs is not None:
        return user.max_queued_runs
    return settings.max_queued_runs_per_user


def gpu_limit(user: User | None, settings: Settings) -> int | None:
    if user is not None and user.max_gpus is not None:
        return user.max_gpus
    return settings.max_gpus_per_user


def check_queue_room(*, session: Session, settings: Settings, caller: Caller, adding: int) -> None:
    """Refuse a submission of `adding` runs past the caller's queued-runs limit (429). The
    user's row is locked to the end of the transaction, so that two submissions of one user
    at once are counted one after the other."""
    user = session.scalar(select(User).where(User.name == caller.name).with_for_update())
    limit = queued_limit(user, settings)
    if limit is None:
        return
    queued = users.usage(session=session, owner=caller.name).queued_runs
    if queued + adding > limit:
        session.rollback()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"{caller.name} has {queued} runs queued and this submission adds {adding}: over "
            f"the limit of {limit} (max_queued_runs); nothing was stored. Cancel queued runs, "
            "or wait for them to start",
        )
