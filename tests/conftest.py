"""Shared fixtures of the service tests (api/, worker/): real Postgres, Redis and workers.

Services: Postgres at 127.0.0.1:5432 (trust auth) and Redis at 127.0.0.1:6379, overridable
with MOE_TEST_POSTGRES_URL / MOE_TEST_REDIS_URL. Each test session gets a database of its
own (migrated by Alembic, dropped at the end) and a Redis key prefix of its own. A test
that needs a missing service is skipped on a laptop and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from store.settings import Settings
from tests.corpus import write_corpus

ROOT = Path(__file__).resolve().parent.parent

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
POSTGRES_URL = os.environ.get(
    "MOE_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("MOE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

# The service tests must never touch the developer's own deployment (a MOE_DATABASE_URL in
# the shell, say): every test builds its Settings explicitly, and these are cleared.
for _field in Settings.model_fields:
    if _field not in ("data_dir", "cache_dir"):  # shared with the engine and its tests
        os.environ.pop(f"MOE_{_field.upper()}", None)


def service_missing(what: str, error: BaseException) -> None:
    """Skip outside CI; in CI a missing service is a failure, never a silent skip."""
    message = f"{what} is not reachable: {error}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Larger than the engine tests' default: service runs use up to 8k training tokens.
    return write_corpus(tmp_path_factory.mktemp("corpus"), lines=(1500, 200, 200))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tokenizer/dataset cache for the session: workers reuse what the first built."""
    return tmp_path_factory.mktemp("cache")


# --------------------------------------------------------------------------- Postgres


def _admin_engine():
    from sqlalchemy import create_engine

    # AUTOCOMMIT: CREATE/DROP DATABASE cannot run in a transaction.
    return create_engine(
        POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )


@pytest.fixture(scope="session")
def postgres_admin():
    """An engine on the server's maintenance database, for creating test databases."""
    from sqlalchemy import text

    engine = _admin_engine()
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        service_missing(f"Postgres ({POSTGRES_URL})", exc)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def empty_postgres(postgres_admin) -> Callable[[], str]:
    """A factory of fresh, empty databases (dropped at the end of the session)."""
    from sqlalchemy import make_url, text

    created: list[str] = []

    def make() -> str:
        name = f"moe_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with postgres_admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)

    yield make
    from store.db import _engines

    for url in list(_engines):
        if "moe_test_" in url:
            _engines.pop(url).dispose()
    with postgres_admin.connect() as connection:
        for name in created:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def database_url(empty_postgres) -> str:
    """The session's Postgres database, migrated to head."""
    from store.migrate import upgrade_database

    url = empty_postgres()
    upgrade_database(url)
    return url


# --------------------------------------------------------------------------- stores


def _migrated_store(request, tmp_path, postgres: Callable[[], str]) -> str:
    from store.migrate import upgrade_database

    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else postgres()
    upgrade_database(url)
    return url


@pytest.fixture(params=["postgres", "sqlite"])
def database(request, tmp_path) -> str:
    """A migrated store: the session's Postgres database, or a SQLite file of the test's."""
    return _migrated_store(request, tmp_path, lambda: request.getfixturevalue("database_url"))


@pytest.fixture(params=["postgres", "sqlite"])
def own_database(request, tmp_path) -> str:
    """A migrated store of the test's own, for what looks at every run (sweeps, counts)."""
    return _migrated_store(request, tmp_path, lambda: request.getfixturevalue("empty_postgres")())


@pytest.fixture()
def experiment_id(database) -> int:
    from tests.factories import new_experiment

    return new_experiment(database)


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_client():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:
        service_missing(f"Redis ({REDIS_URL})", exc)
    yield client
    client.close()


@pytest.fixture(scope="session")
def broker_prefixes(redis_client) -> Iterator[Callable[[], str]]:
    """A factory of Redis key prefixes unique to this session; their keys go at the end."""
    session = f"moe-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    count = iter(range(1_000_000))
    yield lambda: f"{session}-{next(count)}:"
    for key in redis_client.scan_iter(match=f"{session}-*"):
        redis_client.delete(key)


@pytest.fixture(scope="session")
def broker_prefix(broker_prefixes) -> str:
    return broker_prefixes()


# --------------------------------------------------------------------------- settings, API


@pytest.fixture(scope="session")
def service_settings(database_url, broker_prefix, corpus_dir, cache_dir, tmp_path_factory):
    """Settings of the Postgres + Redis deployment the tests run against."""
    return Settings(
        home=tmp_path_factory.mktemp("home"),
        database_url=database_url,
        broker_url=REDIS_URL,
        broker_key_prefix=broker_prefix,
        artifact_dir=tmp_path_factory.mktemp("artifacts"),
        data_dir=corpus_dir,
        cache_dir=cache_dir,
        # Short, so that a dead worker's run is taken over within seconds (see
        # tests/worker/test_faults.py); production keeps a minute. The broker's visibility
        # timeout keeps its default of hours: takeover is the lease's job.
        heartbeat_timeout=3.0,
        sweep_interval=0.5,
        cancel_poll_seconds=0.05,
        # Tests watch every epoch arrive: no cached metrics (tests/api/test_metrics_reads.py
        # covers the cache).
        metrics_max_age=0,
    )


def make_client(settings) -> Any:
    from fastapi.testclient import TestClient

    from api.main import create_app
    from store.settings import get_settings

    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app)


@pytest.fixture()
def worker_settings(deployment):
    """A deployment of the test's own (see `deployment`)."""
    return deployment()


@pytest.fixture(scope="session")
def deployment(service_settings, broker_prefixes, empty_postgres, tmp_path_factory):
    """A factory of deployments: the service settings with a database and a queue of their
    own, so that a worker never finds the runs other tests queued and left (its sweeps would
    publish them again), and a test can count every run and worker it sees."""
    from store.migrate import upgrade_database

    def make(**overrides: Any):
        if "database_url" not in overrides:
            overrides["database_url"] = empty_postgres()
        upgrade_database(overrides["database_url"])
        return service_settings.model_copy(
            update={
                "broker_key_prefix": broker_prefixes(),
                "artifact_dir": tmp_path_factory.mktemp("artifacts"),
                **overrides,
            }
        )

    return make


@pytest.fixture()
def client(service_settings) -> Iterator[Any]:
    with make_client(service_settings) as test_client:
        yield test_client


def queued_messages(redis_client, prefix: str) -> int:
    """Tasks waiting in the session's `gpu` queue."""
    return redis_client.llen(f"{prefix}gpu")


def micro_base(**overrides: Any) -> dict[str, Any]:
    """A request's `base` for a fast run on the generated corpus."""
    return {"max_train_tokens": 4096, "max_val_tokens": 1024, **overrides}


# --------------------------------------------------------------------------- workers


def settings_env(settings) -> dict[str, str]:
    """The environment that gives a worker process these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOE_")}
    env.update(settings.as_env())
    env["PYTHONUNBUFFERED"] = "1"
    # Two cores: one torch thread per worker keeps the test machine responsive.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class WorkerProcess:
    """A real `celery -A worker.celery_app worker` in its own process group."""

    def __init__(
        self, settings, log_path: Path, name: str, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        # No --concurrency: the pool's size is the settings' runs_per_gpu, as deployed.
        command = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            "-Q", "gpu", "--prefetch-multiplier", "1",
            "--hostname", f"{name}@%h", "--without-gossip", "--without-mingle",
            "--loglevel", "INFO",
        ]  # fmt: skip
        self.log = open(log_path, "ab")
        # A session of its own: kill() takes the pool child down with the main process,
        # as when a machine or container dies.
        self.process = subprocess.Popen(
            command, cwd=ROOT, env={**settings_env(settings), **(env or {})}, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> WorkerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log_path.read_text(errors="replace"):
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker did not start:\n{self.log_path.read_text()[-3000:]}")

    @property
    def pool_pids(self) -> list[int]:
        """The pool processes (children) of the worker's main process."""
        pid = self.process.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def terminate(self) -> None:
        """SIGTERM to the main process only, as Docker and Kubernetes send it to PID 1."""
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool child): no chance to ack."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """At teardown: a run still going is abandoned, as at a SIGKILL."""
        self.kill()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture()
def start_worker(tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes (stopped at teardown; their logs shown on failure)."""
    workers: list[WorkerProcess] = []

    def start(
        settings, name: str | None = None, *, wait: bool = True, env: dict | None = None
    ) -> WorkerProcess:
        name = name or f"w{len(workers)}"
        worker = WorkerProcess(settings, tmp_path / f"{name}.log", name, env)
        workers.append(worker)
        return worker.wait_ready() if wait else worker

    yield start
    for worker in workers:
        worker.stop()
    for worker in workers[-6:]:  # the last ones' logs, shown when the test fails
        sys.stderr.write(f"--- {worker.log_path.name} (tail)\n{worker.output()[-3000:]}\n")


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll until `predicate()` is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


# --------------------------------------------------------------------------- the API


class ApiProcess:
    """A real `uvicorn api.main:app` on a free port of 127.0.0.1."""

    def __init__(self, settings, log_path: Path, workers: int = 1) -> None:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "ab")
        command = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", str(workers), "--no-access-log"]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=settings_env(settings), stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 30) -> ApiProcess:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"the API did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture()
def start_api(tmp_path) -> Iterator[Callable[..., ApiProcess]]:
    """Start API servers (stopped at teardown; their logs shown on failure)."""
    servers: list[ApiProcess] = []

    def start(settings, *, workers: int = 1) -> ApiProcess:
        server = ApiProcess(settings, tmp_path / f"api{len(servers)}.log", workers)
        servers.append(server)
        return server.wait_ready()

    yield start
    for server in servers:
        server.stop()
        sys.stderr.write(f"--- {server.log_path.name} (tail)\n"
                         f"{server.log_path.read_text(errors='replace')[-3000:]}\n")  # fmt: skip
