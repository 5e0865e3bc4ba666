"""Engines and sessions: one engine per database URL and process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}


def get_engine(url: str) -> Engine:
    """The process's engine for `url`, made on first use."""
    if url not in _engines:
        _engines[url] = _create_engine(url)
    return _engines[url]


def dispose_engines_after_fork() -> None:
    """In a forked child: forget the parent's pooled connections without closing them
    (closing would end the parent's sessions too), so the child opens its own."""
    for engine in _engines.values():
        engine.dispose(close=False)


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. Session.execute is typed to return a Result;
    a DML statement's is a CursorResult, which has the count."""
    return cast(CursorResult[Any], result).rowcount


def is_sqlite(url: str) -> bool:
    """The embedded store (a file, no server), where a few things work differently."""
    return url.startswith("sqlite")


def _create_engine(url: str) -> Engine:
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # The API and the worker are separate processes on one SQLite file: wait for the
        # other's write lock instead of failing, and let readers go on beside a writer (WAL).
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    from store.settings import get_settings

    settings = get_settings()
    # One connection per API request thread, and a few for the event loop's own reads (the
    # metrics cache, event streams); workers use one or two of theirs.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.api_threads,
        max_overflow=5,
        pool_timeout=settings.db_pool_timeout,
    )


@lru_cache
def _session_factory(url: str) -> sessionmaker[Session]:
    # expire_on_commit off: handlers return rows after committing them.
    return sessionmaker(get_engine(url), expire_on_commit=False)


def new_session(url: str) -> Session:
    """A session on `url`'s engine; the caller closes it."""
    return _session_factory(url)()


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that is closed on exit; the caller commits."""
    with _session_factory(url)() as session:
        yield session
