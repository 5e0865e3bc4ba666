"""Swagger UI and ReDoc from files installed with the project, not from a CDN: /docs and
/redoc work on an air-gapped cluster.

The assets are fastapi-offline's (Swagger UI's bundle and stylesheet, ReDoc's standalone
build), served under /docs-static; the pages are FastAPI's own, pointed at them.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.security import POLICY

STATIC_URL = "/docs-static"
_ASSETS = Path(fastapi_offline.__file__).parent / "static"


def add_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Serve the docs pages of `app` (created with docs_url=None and redoc_url=None)."""
    app.mount(STATIC_URL, StaticFiles(directory=_ASSETS), name="docs-static")
    oauth2_redirect_url = f"{docs_url}/oauth2-redirect"

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
                swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                # no badge that asks validator.swagger.io about our schema
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _with_policy(get_swagger_ui_oauth2_redirect_html())

    @app.get(redoc_url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(
            get_redoc_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                with_google_fonts=False,
            )
        )


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    """The page with the API's policy, widened just enough for it: its own inline scripts
    run (each by its hash, nothing else inline), inline styles apply (Swagger UI and ReDoc
    style their elements as they draw them), and ReDoc's search runs in a blob: worker."""
    html = bytes(page.body).decode()
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    hashes = " ".join(f"'sha256-{_digest(script)}'" for script in scripts)
    page.headers["Content-Security-Policy"] = (
        f"{POLICY}; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "worker-src 'self' blob:"
    )
    return page


def _digest(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
