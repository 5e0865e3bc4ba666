"""What every response tells a browser, and the bearer token checked before routing.

Every response carries a Content-Security-Policy that allows this origin only (the
dashboard's scripts, styles and chart library are files served from /ui; no inline script
or style, no CDN), X-Content-Type-Options: nosniff and Referrer-Policy: no-referrer. A page
that needs more (Swagger UI's inline start-up script, api.docs) sets its own policy.

A request under a guarded path (/experiments, /studies, ...) without an accepted token is a
401 before the router sees it: no redirect (a trailing slash), 404 or 405 answers first, so
nothing about what lies there is told to a caller without one (api.auth). The routes' own
dependency (api.auth.CallerDep) reads the caller identified here; it is what /openapi.json
declares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Unauthorized, identify, unauthorized
from api.errors import DATABASE_AWAY, database_unreachable_response
from store.settings import Settings

POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders:
    """ASGI middleware: HEADERS on every response, unless the response set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, sending)


class Authentication:
    """ASGI middleware: the caller of a request under one of `prefixes` (api.auth.identify),
    in the request's state for the routes; without an accepted token a 401, before routing.
    A user's token is looked up in the database, off the event loop."""

    def __init__(
        self, app: ASGIApp, *, prefixes: Iterable[str], settings: Callable[[Scope], Settings]
    ) -> None:
        self.app = app
        self.prefixes = tuple(prefixes)
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._guarded(scope["path"]):
            authorization = Headers(scope=scope).get("authorization")
            try:
                caller = await anyio.to_thread.run_sync(
                    identify, self.settings(scope), authorization
                )
            except Unauthorized as refused:
                error = unauthorized(refused.reason)
                response = JSONResponse(
                    {"detail": error.detail}, error.status_code, headers=error.headers
                )
                await response(scope, receive, send)
                return
            except DATABASE_AWAY as exc:
                away = database_unreachable_response(scope["method"], scope["path"], exc)
                await away(scope, receive, send)
                return
            scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)

    def _guarded(self, path: str) -> bool:
        return any(path == prefix or path.startswith(f"{prefix}/") for prefix in self.prefixes)
