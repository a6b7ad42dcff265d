"""The exact-match response cache: in-process cachetools, bounded by entries and bytes, with one
upstream call per key at a time (single flight)."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import weakref
from dataclasses import dataclass

import orjson
from cachetools import TLRUCache
from starlette.responses import Response, StreamingResponse

from .errors import GatewayError
from .pipeline import SSE_HEADERS
from .replay import StreamAssembler, stream_events
from .requests import parse_size
from .usage import ask_stream_usage, client_asked_usage

log = logging.getLogger("edgerules.gateway")

ENV_MAX_ENTRIES, ENV_MAX_BYTES = "EDGERULES_CACHE_MAX_ENTRIES", "EDGERULES_CACHE_MAX_BYTES"
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
ENTRY_OVERHEAD = 512   # bytes of Python objects around a stored body (key, entry, cache links)
# Fields that do not change the answer: how it is delivered, and who asked.
_NOT_IN_KEY = frozenset({"stream", "stream_options", "user"})


@dataclass(frozen=True, slots=True)
class Entry:
    body: bytes       # the complete JSON answer
    route: str        # "provider/model" that produced it
    ttl: float


def _expires(key, entry: Entry, now: float) -> float:
    return now + entry.ttl


def _size(entry: Entry) -> int:
    return len(entry.body) + len(entry.route) + ENTRY_OVERHEAD


def cache_key(call) -> bytes:
    """A digest of everything that changes the answer, in a canonical form (sorted keys)."""
    body = {k: v for k, v in call.body.items() if k not in _NOT_IN_KEY}
    target = call.target.to_dict(call.decision.route_by) if call.target is not None else None
    # Secure by default, like a CDN that never gives one caller's authenticated answer to another:
    # the key and the end user are part of the cache key unless the rule says `shared`.
    scope = None if call.decision.cache.shared else [call.key, call.body.get("user")]
    canonical = orjson.dumps([call.kind, target, list(call.decision.cache_by), scope, body],
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).digest()


def cache_directives(value: str | None) -> tuple[bool, bool]:
    """(no-cache, no-store) from a Cache-Control header."""
    if not value:
        return False, False
    names = {part.split("=", 1)[0].strip().lower() for part in value.split(",")}
    return "no-cache" in names, "no-store" in names


class ResponseCache:
    def __init__(self, state_uri: str, gw, *, max_entries: int | None = None, max_bytes: int | None = None):
        # Shared state (a redis:// URI) is for limits; the cache stays in this process.
        self.gw = gw
        self.max_entries = max_entries or int(os.environ.get(ENV_MAX_ENTRIES, DEFAULT_MAX_ENTRIES))
        self.max_bytes = max_bytes or parse_size(os.environ.get(ENV_MAX_BYTES, str(DEFAULT_MAX_BYTES)))
        self.entries = TLRUCache(self.max_bytes, _expires, time.monotonic, _size)
        self.inflight: dict[bytes, asyncio.Future] = {}

    async def serve(self, call, producer, request_headers) -> Response:
        """The answer from the cache, or from `producer()` (the upstream) stored on the way out."""
        no_cache, no_store = cache_directives(request_headers.get("cache-control"))
        key = cache_key(call)
        while not no_cache:
            entry = self.entries.get(key)
            if entry is not None:
                return self._hit(call, entry)
            leader = self.inflight.get(key)
            if leader is None:
                break
            entry = await self._follow(call, leader)
            if entry is not None:
                return self._hit(call, entry)
            # The leader failed: look again; the first follower to wake becomes the next leader.
        return await self._lead(call, producer, key, no_cache, no_store)

    async def _follow(self, call, leader: asyncio.Future) -> Entry | None:
        remaining = call.deadline_at - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0)):
                return await asyncio.shield(leader)
        except TimeoutError:
            raise GatewayError(504, f"the request's deadline of {call.decision.deadline:g}s passed while "
                                    f"waiting for an identical request", code="deadline_exceeded") from None

    async def _lead(self, call, producer, key: bytes, no_cache: bool, no_store: bool) -> Response:
        done: asyncio.Future | None = None
        if not no_cache:
            done = self.inflight[key] = asyncio.get_running_loop().create_future()
        call.cache = "BYPASS" if no_cache else "MISS"
        assembler = None
        if call.stream:
            ask_stream_usage(call)   # so a stored stream has its usage, like a stored JSON answer
            assembler = call.tap = StreamAssembler(call.tap)
        try:
            response = await producer()
        except BaseException:
            self._resolve(key, done, None)
            raise
        if getattr(response, "body_iterator", None) is None:
            entry = self._entry(call, response.body) if response.status_code == 200 else None
            self._finish(key, done, entry, no_store)
            return response
        watched = self._watch(call, response.body_iterator, assembler, key, done, no_store)
        # A stream the server never starts (its client left first) never runs its `finally`:
        # the followers must not wait on it until their deadline.
        weakref.finalize(watched, self._resolve, key, done, None)
        response.body_iterator = watched
        return response

    async def _watch(self, call, events, assembler: StreamAssembler | None, key, done, no_store: bool):
        """Relay a live stream; once it ended whole, store it assembled and wake the followers."""
        entry = None
        try:
            async for event in events:
                yield event
            if assembler is not None and assembler.complete and call.status == 200:
                entry = self._entry(call, orjson.dumps(assembler.completion()))
        finally:
            await events.aclose()
            self._finish(key, done, entry, no_store)

    def _entry(self, call, body: bytes) -> Entry:
        return Entry(body, call.route, float(call.decision.cache.ttl))

    def _finish(self, key: bytes, done, entry: Entry | None, no_store: bool) -> None:
        if entry is not None and not no_store:
            self.store(key, entry)
        self._resolve(key, done, entry)

    def _resolve(self, key: bytes, done, entry: Entry | None) -> None:
        if done is None:
            return
        if self.inflight.get(key) is done:
            del self.inflight[key]
        if not done.done():
            done.set_result(entry)

    def store(self, key: bytes, entry: Entry) -> None:
        """Keep an answer; the least recently used ones go when either bound is passed."""
        if _size(entry) > self.max_bytes:
            return
        entries = self.entries
        entries[key] = entry
        while len(entries) > self.max_entries:
            entries.popitem()

    def _hit(self, call, entry: Entry) -> Response:
        call.cache, call.route = "HIT", entry.route
        if not call.stream:
            return Response(entry.body, media_type="application/json")
        completion = orjson.loads(entry.body)
        events = stream_events(completion, client_asked_usage(call))
        return StreamingResponse(self._replay(call, events), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    async def _replay(self, call, events: list[bytes]):
        try:
            for event in events:
                yield event
        finally:
            await self.gw.finish(call)   # as a live stream does when its last event is sent
