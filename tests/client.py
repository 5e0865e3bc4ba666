"""The API as the tests call it: starlette's TestClient in-process (an httpx.Client, so no
socket) on a deployment's settings, and a run submitted, read and waited for through any
httpx-like client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from store.settings import Settings
from tests.factories import request_body
from tests.waiting import wait_for


def make_client(settings: Settings) -> Any:
    """A TestClient on a fresh app that sees `settings`; enter it to run the app's lifespan."""
    from fastapi.testclient import TestClient

    from api.main import create_app
    from store.settings import get_settings

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app)


FINISHED = {"succeeded", "failed", "cancelled"}


def submit(api: Any, name: str = "run", **fields: Any) -> dict[str, Any]:
    """POST /experiments with `request_body(name, **fields)`; the run it created (a 201)."""
    response = api.post("/experiments", json=request_body(name, **fields))
    assert response.status_code == 201, response.text
    return response.json()


def read_run(api: Any, experiment_id: int) -> dict[str, Any] | None:
    """The run as the API shows it; None while the API cannot answer (a database outage)."""
    response = api.get(f"/experiments/{experiment_id}")
    return response.json() if response.status_code == 200 else None


def wait_for_run(
    api: Any, experiment_id: int, check: Callable[[dict], bool], *, timeout: float, what: str
) -> dict[str, Any]:
    """Poll the run until `check(run)` holds; that run."""

    def probe() -> dict[str, Any] | None:
        run = read_run(api, experiment_id)
        return run if run is not None and check(run) else None

    return wait_for(probe, timeout=timeout, interval=0.1, what=what)


def wait_finished(api: Any, experiment_id: int, timeout: float = 120) -> dict[str, Any]:
    """The run once it has ended (succeeded, failed or cancelled)."""
    return wait_for_run(api, experiment_id, lambda run: run["status"] in FINISHED,
                        timeout=timeout, what=f"experiment {experiment_id} to end")  # fmt: skip
