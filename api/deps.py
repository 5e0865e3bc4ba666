"""FastAPI dependencies: settings, a database session, the task queue, the token guard."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from store.db import session_scope
from store.queue import TrainingQueue
from store.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_db(settings: SettingsDep) -> AsyncIterator[Session]:
    # async, though the handlers that use the session are not: its close (which returns the
    # connection to the pool) then runs on the event loop as soon as the request is done,
    # instead of queueing for a thread behind new requests while holding the connection.
    # Making a Session does no I/O; it connects on first use, in the handler's thread.
    with session_scope(settings.database_url) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def get_queue(settings: SettingsDep) -> TrainingQueue:
    return TrainingQueue.for_settings(settings)


QueueDep = Annotated[TrainingQueue, Depends(get_queue)]

# auto_error off: a missing header is our 401 (with the scheme), not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False)


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """With MOE_API_TOKEN set, every guarded route needs `Authorization: Bearer <token>`.

    async: it does no I/O, so it runs on the event loop instead of a thread-pool hop.
    """
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value()
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode(), expected.encode()
    ):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
