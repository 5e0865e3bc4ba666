"""The client and the CLI against the real app, in-process (starlette's TestClient is an
httpx.Client, so no socket), on a Postgres database and Redis queue of the module's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from moe_lab.cli import app
from moe_lab.client import Client
from tests.client import make_client


@pytest.fixture(autouse=True)
def no_login_of_the_developer(tmp_path, monkeypatch):
    """The tests' clients never read what `moe-lab login` kept on this machine: each test
    has a config folder of its own (XDG_CONFIG_HOME), and no MOE_API_TOKEN."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("MOE_API_TOKEN", raising=False)


@pytest.fixture(scope="module")
def settings(deployment):
    # No worker: submitted runs stay queued; the tests finish them as a worker would
    # (tests/factories.py, through store.leases).
    return deployment()


@pytest.fixture(scope="module")
def http(settings) -> Iterator[Any]:
    """`client`, for the whole module: test_reads seeds its runs once, through it."""
    with make_client(settings) as test_client:
        yield test_client


@pytest.fixture()
def api(http) -> Client:
    return Client(http=http)


@pytest.fixture()
def cli(api) -> Callable[..., Result]:
    """`cli("ls", "--json")`: the moe-lab command, as the shell would run it, on `api`."""
    runner = CliRunner()

    def invoke(*args: Any, input: str | None = None, client: Client | None = None) -> Result:
        return runner.invoke(app, [str(a) for a in args], obj=client or api, input=input)

    return invoke
