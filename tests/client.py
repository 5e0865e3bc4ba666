"""The API as the tests call it in-process: starlette's TestClient (an httpx.Client, so no
socket) on the app, with the settings of a deployment."""

from __future__ import annotations

from typing import Any

from store.settings import Settings


def make_client(settings: Settings) -> Any:
    """A TestClient on a fresh app that sees `settings`; enter it to run the app's lifespan."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from store.settings import get_settings

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app)
