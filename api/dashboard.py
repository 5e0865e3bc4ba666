"""The dashboard: static pages at /ui, served from this package (the chart library is
vendored: nothing comes from a CDN). The pages hold no data; they read the same JSON
routes as any client, with the bearer token the user gives them, so they show nothing a
request without the token could get."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def add_dashboard(app: FastAPI) -> None:
    # html=True: /ui/ serves index.html; the views are routed in the page (#/run/3, ...).
    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/ui/")
