"""FastAPI dependencies: settings, a database session, the task queue (the caller: api.auth)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.orm import Session

from store.db import new_session
from store.queue import TrainingQueue
from store.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_db(settings: SettingsDep) -> AsyncIterator[Session]:
    # Making a Session does no I/O: it connects on first use, in the handler's thread.
    session = new_session(settings.database_url)
    try:
        yield session
    finally:
        if session.in_transaction():
            # Closing rolls the open transaction back: database I/O, so off the event loop
            # (a stalled database must not freeze it), on threads of its own, so that it
            # never queues behind new requests while holding its connection.
            await anyio.to_thread.run_sync(session.close, limiter=_closing())
        else:
            session.close()  # nothing checked out: no I/O


_closers: dict[int, anyio.CapacityLimiter] = {}


def _closing() -> anyio.CapacityLimiter:
    """The closing threads' limiter, one per event loop (tests run several apps)."""
    loop = id(asyncio.get_running_loop())
    if loop not in _closers:
        _closers[loop] = anyio.CapacityLimiter(8)
    return _closers[loop]


# scope="function": the session closes when the handler returns, before the response is
# sent; otherwise a slow client (a checkpoint download, say) would hold a connection, and
# enough of them would lock every other request out of the pool.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]


def get_queue(settings: SettingsDep) -> TrainingQueue:
    return TrainingQueue.for_settings(settings)


QueueDep = Annotated[TrainingQueue, Depends(get_queue)]


def token_accepted(settings: Settings, authorization: str | None) -> bool:
    """Whether an Authorization header's value carries MOE_API_TOKEN, the bootstrap admin's
    (any does without one): what /readyz tells its details to."""
    if settings.api_token is None:
        return True
    scheme, token = get_authorization_scheme_param(authorization)
    expected = settings.api_token.get_secret_value()
    return scheme.lower() == "bearer" and secrets.compare_digest(token.encode(), expected.encode())
