"""Databases of one's own on a shared Postgres server (the machine's, or CI's): created
empty, dropped at the end, so that a test session or a benchmark never sees another's
rows and leaves nothing behind."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import Engine, create_engine, make_url, text


class ScratchDatabases:
    """Databases named `<prefix>_<pid>_<random>` on the server of `server_url`; `drop_all`
    drops every one made here (their clients disconnected) and closes this process's
    engines on them."""

    def __init__(self, server_url: str, prefix: str) -> None:
        self.server_url, self.prefix = server_url, prefix
        self.created: list[str] = []
        # AUTOCOMMIT: CREATE/DROP DATABASE cannot run in a transaction.
        self._admin: Engine = create_engine(
            server_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
        )

    def check(self) -> None:
        """Raise when the server does not answer."""
        try:
            with self._admin.connect() as connection:
                connection.execute(text("SELECT 1"))
        finally:
            self._admin.dispose()  # no idle connection held meanwhile; reopened on use

    def create(self) -> str:
        """A fresh, empty database; its URL (credentials kept)."""
        name = f"{self.prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with self._admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        url = make_url(self.server_url).set(database=name)
        return url.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        from store.db import _engines

        for url in [u for u in _engines if any(name in u for name in self.created)]:
            _engines.pop(url).dispose()
        with self._admin.connect() as connection:
            for name in self.created:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.created.clear()
        self._admin.dispose()
