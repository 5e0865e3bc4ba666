"""The service as the `service` and `recovery` sections measure it: on the machine's Postgres
and Redis, a throwaway database (migrated by Alembic, dropped at the end) and a Redis key
prefix of its own, the API as the README deploys it, and workers on demand; started and
stopped through local_deployment, as the tests start theirs.

Servers: MOE_BENCH_POSTGRES_URL (default the tests' MOE_TEST_POSTGRES_URL, else
postgresql+psycopg://root@127.0.0.1:5432/test) and MOE_BENCH_REDIS_URL (likewise,
redis://127.0.0.1:6379/0). Without them a section reports "skipped: <reason>".
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from local_deployment.processes import ApiProcess, StartedProcesses, WorkerProcess
    from store.settings import Settings

POSTGRES_URL = os.environ.get(
    "MOE_BENCH_POSTGRES_URL",
    os.environ.get("MOE_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"),
)
REDIS_URL = os.environ.get(
    "MOE_BENCH_REDIS_URL", os.environ.get("MOE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
)


def unavailable() -> str | None:
    """Why the service cannot be measured here (None: it can)."""
    try:
        import httpx  # noqa: F401
        import redis

        import api.main  # noqa: F401
        from local_deployment.databases import ScratchDatabases
    except Exception as exc:
        return f"service not importable: {type(exc).__name__}: {exc}"
    try:
        ScratchDatabases(POSTGRES_URL, "moe_bench").check()
    except Exception as exc:
        return f"Postgres ({POSTGRES_URL}) not reachable: {type(exc).__name__}"
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"Redis ({REDIS_URL}) not reachable: {type(exc).__name__}"
    return None


@dataclass
class Deployment:
    """A running deployment: its settings, its API server, what it started (workers
    come and go through `worker`), its Redis client and a folder for logs and files."""

    settings: Settings
    api: ApiProcess
    processes: StartedProcesses
    redis: Any  # redis.Redis, imported only where the service is measured
    tmp: Path

    @property
    def url(self) -> str:
        """The database's URL."""
        return self.settings.database_url

    @property
    def base_url(self) -> str:
        return self.api.url

    @property
    def prefix(self) -> str:
        return self.settings.broker_key_prefix

    def worker(self, name: str) -> WorkerProcess:
        """A real, ready Celery worker on this deployment; killed at the end if still up."""
        return self.processes.worker(self.settings, name)

    def drop_queued(self) -> None:
        """Forget every queued message (earlier POSTs' tasks) of this deployment, and cancel
        their runs in the store: a worker takes the fairest queued run from the store
        (store.queue_order), not the message it was handed, so runs left queued there would
        be trained before the next one posted."""
        from sqlalchemy import update

        from store.db import session_scope
        from store.models import Experiment, Status
        from store.models.base import utcnow

        _delete_keys(self.redis, self.prefix)
        with session_scope(self.url) as session:
            session.execute(update(Experiment).where(Experiment.status == Status.queued)
                            .values(status=Status.cancelled, cancel_requested=True,
                                    finished_at=utcnow()))  # fmt: skip
            session.commit()


def _delete_keys(client: Any, prefix: str) -> None:
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


@contextlib.contextmanager
def deployment(*, workers: int = 1, **overrides: Any) -> Iterator[Deployment]:
    """A migrated database, a Redis prefix, settings (`overrides` on top) and a running
    API (`python -m api.serve`, `--workers` workers); all torn down."""
    import redis

    from local_deployment.databases import ScratchDatabases
    from local_deployment.processes import StartedProcesses
    from store.migrate import upgrade_database
    from store.settings import Settings

    from .data_pipeline import SMOKE_LINES, _head, data_dir

    databases = ScratchDatabases(POSTGRES_URL, "moe_bench")
    prefix = f"moe-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}:"
    client = redis.Redis.from_url(REDIS_URL)
    with tempfile.TemporaryDirectory(prefix="moe-bench-svc-") as folder:
        tmp = Path(folder)
        try:
            url = databases.create()
            upgrade_database(url)
            source = data_dir()
            corpus = _head(source, tmp / "corpus", SMOKE_LINES) if source else None
            settings = Settings(
                home=tmp / "home", database_url=url, broker_url=REDIS_URL,
                broker_key_prefix=prefix, artifact_dir=tmp / "artifacts", data_dir=corpus,
                cache_dir=tmp / "cache", cancel_poll_seconds=0.05, **overrides,
            )  # fmt: skip
            # Log tails only on an error: a benchmark's output is its table.
            with StartedProcesses(tmp, tails=False) as processes:
                api = processes.api(settings, workers=workers, entry="api.serve")
                yield Deployment(settings, api, processes, client, tmp)
        finally:
            _delete_keys(client, prefix)
            databases.drop_all()
