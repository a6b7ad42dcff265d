"""`memory://` for the limits library: its asyncio MemoryStorage with each moving window kept
oldest-first in a deque, expired by the request that meets it, and no expiry task.

The library's own storage keeps a moving window newest-first in a list: every hit inserts at the
front (a copy of the whole window: ~45 µs at 100,000 entries, a limit met by 1,600 requests/s over
a minute) and every acquire or increment starts an expiry task that bisects each window through
`asyncio.to_thread` and copies it. Here a hit is an append, the window statistics are the deque's
first entry and length, and a sweep, a thousand keys at a time, drops the counters nobody touched.
"""
from __future__ import annotations

import time
from collections import deque
from itertools import repeat

from limits.aio.storage import MemoryStorage

SWEEP_EVERY = 0.1   # seconds between two steps of the sweep of counters whose window ended
SWEEP_KEYS = 1000   # keys one step looks at: a step stays well under a millisecond however many keys


class DequeMemoryStorage(MemoryStorage):
    # No STORAGE_SCHEME of its own: `async+memory://` keeps naming the library's class; the
    # limiter builds this one for memory:// explicitly.

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.events: dict[str, deque[float]] = {}
        self._spans: dict[str, int] = {}    # a moving window's length, for the sweep
        self._next_sweep = time.time() + SWEEP_EVERY
        self._unswept: list[str] = []       # the keys the current pass of the sweep has yet to see

    # take(), window(), add(), count() and ends() are the synchronous forms the limiter calls
    # directly (the async methods below wrap them): the library wraps
    # each async storage method in a second coroutine (to rename its errors), two awaits a call
    # that a dict and a deque cannot fail.

    def take(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        """acquire_entry(), now."""
        if amount > limit:
            return False
        now = time.time()
        events = self.events.get(key)
        if events is None:
            events = self.events[key] = deque()
            self._spans[key] = expiry
        else:
            _drop_before(events, now - expiry)
        if len(events) + amount > limit:
            return False
        if amount == 1:
            events.append(now)
        else:
            events.extend(repeat(now, amount))
        if now >= self._next_sweep:
            self._sweep(now)
        return True

    def window(self, key: str, expiry: int) -> tuple[float, int]:
        """(time of the oldest entry still in the window, entries in the window), now."""
        now = time.time()
        events = self.events.get(key)
        if events:
            _drop_before(events, now - expiry)
            if events:
                return events[0], len(events)
        return now, 0

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return self.take(key, limit, expiry, amount)

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        """(time of the oldest entry still in the window, entries in the window)."""
        return self.window(key, expiry)

    def add(self, key: str, expiry: float, amount: int = 1) -> int:
        """incr(), now: a fixed window's counter plus `amount`, the window starting with its first count."""
        now = time.time()
        storage = self.storage
        if self.expirations.get(key, 0) <= now:
            storage.pop(key, None)
            self.expirations.pop(key, None)
        count = storage[key] = storage.get(key, 0) + amount
        if count == amount:
            self.expirations[key] = now + expiry
        if now >= self._next_sweep:
            self._sweep(now)
        return count

    def count(self, key: str) -> int:
        """get(), now."""
        if self.expirations.get(key, 0) <= time.time():
            self.storage.pop(key, None)
            self.expirations.pop(key, None)
            return 0
        return self.storage.get(key, 0)

    def ends(self, key: str) -> float:
        """get_expiry(), now."""
        return self.expirations.get(key, time.time())

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        return self.add(key, expiry, amount)

    async def get(self, key: str) -> int:
        return self.count(key)

    async def get_expiry(self, key: str) -> float:
        return self.ends(key)

    async def decr(self, key: str, amount: int = 1) -> int:
        count = max(await self.get(key) - amount, 0)
        if key in self.expirations:
            self.storage[key] = count
        return count

    async def clear(self, key: str) -> None:
        await super().clear(key)
        self._spans.pop(key, None)

    async def reset(self) -> int | None:
        self._spans.clear()
        return await super().reset()

    def _sweep(self, now: float) -> None:
        """One step of a pass over every key, forgetting the counters whose window ended: the
        memory a key uses ends with its window, a while after it at most."""
        self._next_sweep = now + SWEEP_EVERY
        unswept = self._unswept
        if not unswept:
            unswept.extend(self.events)
            unswept.extend(self.expirations)
            self.locks.clear()   # the library's per-key asyncio locks: this storage takes none
        events_of, spans, expirations = self.events, self._spans, self.expirations
        for _ in range(min(SWEEP_KEYS, len(unswept))):
            key = unswept.pop()
            events = events_of.get(key)
            if events is not None:
                _drop_before(events, now - spans.get(key, 0))
                if not events:
                    del events_of[key]
                    spans.pop(key, None)
            expiry = expirations.get(key)
            if expiry is not None and expiry <= now:
                self.storage.pop(key, None)
                del expirations[key]


# limits wraps these methods in an error translator at every subclass level (two coroutine layers
# a call here); nothing in memory raises what it translates, so the plain methods are used.
for _name in ("incr", "get", "get_expiry", "acquire_entry", "get_moving_window"):
    setattr(DequeMemoryStorage, _name, vars(DequeMemoryStorage)[_name].__wrapped__)


def _drop_before(events: deque, cutoff: float) -> None:
    while events and events[0] < cutoff:
        events.popleft()
