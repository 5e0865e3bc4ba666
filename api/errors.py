"""The error responses each route declares in OpenAPI: every one has the body `ErrorDetail`."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount

from api.body_limit import MAX_BODY_BYTES
from api.schemas import ErrorDetail

log = logging.getLogger(__name__)

_MEANING = {
    400: "the body could not be read as JSON text (not UTF-8, say)",
    401: "missing or wrong bearer token (a revoked or expired one, a disabled user's); "
    "without MOE_API_TOKEN set, only a user's token that is not accepted",
    403: "the caller's role or ownership does not allow this (the detail says whose it is)",
    429: "over the caller's quota (the detail names the limit and the count); nothing stored",
    404: "no such experiment, study or baseline",
    409: "the run is not in a state that allows this",
    413: f"the request body is over {MAX_BODY_BYTES // 1024} KiB",
    422: "a bad request: one entry per bad field, located by `loc`",
    503: "the database is unreachable; retry after the Retry-After header's seconds",
}


# The database being away (a restart, a failover, a full pool): a moment to wait out.
DATABASE_AWAY = (OperationalError, InterfaceError, PoolTimeout)
# Seconds a client should wait before retrying while the database is unreachable.
DATABASE_RETRY_AFTER = 5


def database_unreachable_response(method: str, path: str, exc: BaseException) -> JSONResponse:
    # whatever the request was writing is rolled back with its session
    log.warning("%s %s: 503, database unreachable: %s", method, path,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__)  # fmt: skip
    return JSONResponse(
        {"detail": "the database is unreachable; retry shortly"},
        status_code=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


def error_responses(*codes: int, **meanings: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status with the error model and what it means there
    (`meanings` by `e409="..."` overrides the generic text)."""
    return {
        code: {"model": ErrorDetail, "description": meanings.get(f"e{code}", _MEANING[code])}
        for code in codes
    }


# How much of a bad input a 422 echoes back: enough to see it, never the whole of a huge one.
ECHO_CHARS = 200


async def validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 body, with each error's `input` made safe to send: strings cut to
    ECHO_CHARS and made UTF-8 (a lone surrogate would fail to encode: a 500), non-finite
    numbers as text, large structures left out."""
    assert isinstance(exc, RequestValidationError)
    errors = [{**error, "input": _echo(error.get("input")), "msg": _with_suggestion(error)}
              for error in exc.errors()]  # fmt: skip
    errors = [{key: _echo(value) for key, value in error.items()} for error in errors]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def _with_suggestion(error: dict[str, Any]) -> Any:
    """An unknown field of a config or base, with the field it most likely meant
    (`config.topk`: did you mean 'top_k'?)."""
    from difflib import get_close_matches

    from api.overrides import BaseOverrides, ConfigOverrides

    loc, msg = error.get("loc", ()), error.get("msg")
    fields: dict[str, type[BaseModel]] = {
        "config": ConfigOverrides, "overrides": ConfigOverrides, "base": BaseOverrides,
    }  # fmt: skip
    if error.get("type") != "extra_forbidden" or len(loc) < 2 or loc[-2] not in fields:
        return msg
    known = list(fields[loc[-2]].model_fields)
    close = get_close_matches(str(loc[-1]).lower(), known, n=1, cutoff=0.6)
    return f"{msg}; did you mean {close[0]!r}?" if close else msg


def _echo(value: Any) -> Any:
    if isinstance(value, str):
        safe = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return safe if len(safe) <= ECHO_CHARS else safe[:ECHO_CHARS] + "..."
    if isinstance(value, bytes):
        return _echo(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict | list | tuple):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        if len(value) > 20:
            return f"({type(value).__name__} of {len(value)} items, not echoed)"
        echoed = {_echo(key): _echo(item) for key, item in items}
        return echoed if isinstance(value, dict) else list(echoed.values())
    return value


# The methods a path may be asked for, in the order an Allow header lists them.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """A 405 whose Allow header lists every method the path takes: the router answers with
    the first route that matched the path only (GET /experiments/{id}, not its DELETE)."""
    assert isinstance(exc, HTTPException)
    allowed = [method for method in METHODS if _routed(request, method)]
    if allowed and "Allow" in (exc.headers or {}):  # else a mount's own (StaticFiles: GET, HEAD)
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)}
    return await http_exception_handler(request, exc)


def _routed(request: Request, method: str) -> bool:
    # from the app's root: inside a mount (/ui), root_path is the mount's
    root = request.scope.get("app_root_path", request.scope.get("root_path", ""))
    scope = {**request.scope, "method": method, "root_path": root}
    for route in request.app.router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL and not isinstance(route, Mount):  # a mount takes any method
            return True
    return False
