"""A small in-process cache of database reads that many clients poll at once (metrics,
event streams): an entry is fresh for `max_age` seconds, or for FINAL_MAX_AGE once `final`
(a finished run's never changes, but it can be deleted through another API process, whose
cache this one cannot see), and a miss is refreshed by one reader while the others wait."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, Protocol, TypeVar


class Entry(Protocol):
    # Read-only, so that frozen dataclasses are entries
    @property
    def final(self) -> bool: ...  # never changes again (a finished run's)

    @property
    def at(self) -> float: ...  # time.monotonic() when read


E = TypeVar("E", bound=Entry)

# How long a finished run's entry is served without a read: a deleted run's metrics
# disappear from every API process within this long.
FINAL_MAX_AGE = 60.0


class ReadCache(Generic[E]):
    def __init__(self, size: int = 512) -> None:
        self._entries: OrderedDict[Hashable, E] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()  # readers may run in the thread pool
        self._refreshes: dict[Hashable, asyncio.Lock] = {}

    def get(self, key: Hashable, max_age: float) -> E | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if time.monotonic() - entry.at >= (FINAL_MAX_AGE if entry.final else max_age):
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: Hashable, entry: E) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    async def read(self, key: Hashable, max_age: float, load: Callable[[], Awaitable[E]]) -> E:
        """The entry for `key`, loading it on a miss. One load per expiry: the clients that
        miss together wait for it, rather than all querying the moment an entry ages out."""
        entry = self.get(key, max_age)
        if entry is not None:
            return entry
        async with self._refreshing(key):
            entry = self.get(key, max_age)
            if entry is None:
                entry = await load()
                self.put(key, entry)
            return entry

    def _refreshing(self, key: Hashable) -> asyncio.Lock:
        # Handlers run on one event loop, so a plain dict of locks is enough.
        if len(self._refreshes) > 4 * self._size:
            self._refreshes = {k: v for k, v in self._refreshes.items() if v.locked()}
        return self._refreshes.setdefault(key, asyncio.Lock())
