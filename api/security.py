"""What every response tells a browser, and the bearer token checked before routing.

Every response carries a Content-Security-Policy that allows this origin only (the
dashboard's scripts, styles and chart library are files served from /ui; no inline script
or style, no CDN), X-Content-Type-Options: nosniff and Referrer-Policy: no-referrer. A page
that needs more (Swagger UI's inline start-up script, api.docs) sets its own policy.

With MOE_API_TOKEN set, a request under a guarded path (/experiments, /studies, ...) without
the token is a 401 before the router sees it: no redirect (a trailing slash), 404 or 405
answers first, so nothing about what lies there is told to a caller without the token.
The routes' own guard (api.deps.require_token) stays: it is what /openapi.json declares.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import token_accepted, unauthorized
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


class TokenBeforeRouting:
    """ASGI middleware: a request under one of `prefixes` without the token is a 401."""

    def __init__(
        self, app: ASGIApp, *, prefixes: Iterable[str], settings: Callable[[Scope], Settings]
    ) -> None:
        self.app = app
        self.prefixes = tuple(prefixes)
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._guarded(scope["path"]):
            authorization = Headers(scope=scope).get("authorization")
            if not token_accepted(self.settings(scope), authorization):
                refused = unauthorized()
                response = JSONResponse(
                    {"detail": refused.detail}, refused.status_code, headers=refused.headers
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _guarded(self, path: str) -> bool:
        return any(path == prefix or path.startswith(f"{prefix}/") for prefix in self.prefixes)
