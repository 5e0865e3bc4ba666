"""`alembic upgrade head` from code, for the embedded default and for tests."""

from __future__ import annotations

import fcntl
from pathlib import Path

from alembic import command
from alembic.config import Config

from store.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", database_url)
    # Leave the host process's logging alone (uvicorn's, celery's, pytest's).
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade_database(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")


def auto_migrate(settings: Settings) -> None:
    """Upgrade the embedded SQLite store at start (no-op unless settings.auto_migrate).

    The API and a worker may start at the same moment on one laptop: a lock file beside
    the data makes the second wait instead of racing the first through CREATE TABLE.
    """
    if not settings.auto_migrate:
        return
    settings.home.mkdir(parents=True, exist_ok=True)
    with open(settings.home / ".migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        upgrade_database(settings.database_url)
