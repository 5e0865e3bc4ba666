"""Liveness and readiness probes (never behind the token guard)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import text

from api.deps import QueueDep, SessionDep, SettingsDep, token_accepted
from api.schemas import Health

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(
    *, request: Request, session: SessionDep, queue: QueueDep, settings: SettingsDep,
    response: Response,
) -> Health:  # fmt: skip
    """The database and the broker are reachable; 503 naming the one that is not. Why it
    is not (the driver's error, with host and port) only to a caller with the token: the
    probe is open to anyone who can reach the API."""
    # (an open API, without a token set, keeps nothing from anyone)
    detailed = token_accepted(settings, request.headers.get("authorization"))
    checks = {}
    for name, check in (("database", lambda: session.execute(text("SELECT 1"))),
                        ("broker", queue.ping)):  # fmt: skip
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # any driver error means not ready
            log.warning("readyz: %s unavailable: %s", name, _first_line(exc))
            checks[name] = f"unavailable: {_first_line(exc)}" if detailed else "unavailable"
    if all(value == "ok" for value in checks.values()):
        return Health(status="ok", checks=checks)
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="unavailable", checks=checks)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
