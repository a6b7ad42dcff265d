"""The exact-match response cache, bounded by entries and bytes, with one upstream call per key at a
time (single flight): in-process cachetools on `memory://`, Redis on `--state redis://` (every
instance shares the entries and the single flight; when Redis fails, requests go upstream: BYPASS)."""
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
from .providers.base import parsed_answer_limit
from .shared import is_failure
from .redact import policy_redactor
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


def uses_semantic(policy) -> bool:
    """Whether a rule of the policy has `cache semantic`."""
    return any(a.kind == "cache" and a.value.enabled and a.value.semantic is not None
               for rule in policy.checked.rules for a in rule.actions)


def cache_directives(value: str | None) -> tuple[bool, bool]:
    """(no-cache, no-store) from a Cache-Control header."""
    if not value:
        return False, False
    names = {part.split("=", 1)[0].strip().lower() for part in value.split(",")}
    return "no-cache" in names, "no-store" in names


class ResponseCache:
    def __init__(self, state_uri: str, gw, *, shared=None, max_entries: int | None = None,
                 max_bytes: int | None = None):
        self.gw = gw
        self.max_entries = max_entries or int(os.environ.get(ENV_MAX_ENTRIES, DEFAULT_MAX_ENTRIES))
        self.max_bytes = max_bytes or parse_size(os.environ.get(ENV_MAX_BYTES, str(DEFAULT_MAX_BYTES)))
        self.entries = TLRUCache(self.max_bytes, _expires, time.monotonic, _size)
        self.inflight: dict[bytes, asyncio.Future] = {}
        self.remote = RemoteEntries(shared, self.max_entries, self.max_bytes) if shared is not None else None
        self.semantic = None   # the semantic path, made when a `cache semantic` rule is first met
        live = getattr(gw, "live", None)
        if live is not None and uses_semantic(live.policy):
            self._semantic_path()   # now, so the first request does not wait for numpy's import
        self.max_parsed = parsed_answer_limit()   # a stream hit parses its entry whole: bigger is not kept

    async def serve(self, call, producer, request_headers) -> Response:
        """The answer from the cache, or from `producer()` (the upstream) stored on the way out."""
        no_cache, no_store = cache_directives(request_headers.get("cache-control"))
        key = cache_key(call)
        if call.decision.cache.semantic is not None and not no_cache and call.kind == "chat":
            return await (self.semantic or self._semantic_path()).serve(call, producer, key, no_store)
        return await self.serve_exact(call, producer, key, no_cache, no_store)

    def _semantic_path(self):
        from .semantic import SemanticCache   # numpy is loaded only by a policy that uses it

        self.semantic = SemanticCache(self, self.max_entries, self.max_bytes)
        return self.semantic

    async def serve_exact(self, call, producer, key: bytes, no_cache: bool, no_store: bool) -> Response:
        if self.remote is not None:
            return await self._serve_shared(call, producer, key, no_cache, no_store)
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

    async def _serve_shared(self, call, producer, key: bytes, no_cache: bool, no_store: bool) -> Response:
        """As serve(), on Redis: requests of this process wait on one local leader, which claims the
        key across instances (a lock with a short TTL) or waits for the instance that holds it."""
        while not no_cache:
            leader = self.inflight.get(key)
            if leader is None:
                break
            entry = await self._follow(call, leader)
            if entry is not None:
                return self._hit(call, entry)
        done = None if no_cache else self.inflight.setdefault(key, asyncio.get_running_loop().create_future())
        token = None
        try:
            if not no_cache:
                entry, token = await self.remote.claim(key, call.deadline_at, call.decision.deadline)
                if entry is not None:
                    self._resolve(key, done, entry)
                    return self._hit(call, entry)
        except RemoteDown:
            self._resolve(key, done, None)
            call.cache = "BYPASS"   # Redis is down: answer from upstream, store nothing
            return await producer()
        except BaseException:
            self._resolve(key, done, None)
            raise
        return await self._lead(call, producer, key, no_cache, no_store, done=done, token=token)

    async def _lead(self, call, producer, key: bytes, no_cache: bool, no_store: bool, *,
                    done: asyncio.Future | None = None, token: bytes | None = None) -> Response:
        if not no_cache and done is None:
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
            await self._unlock(key, token)
            raise
        if getattr(response, "body_iterator", None) is None:
            entry = self._entry(call, response.body) if response.status_code == 200 else None
            await self._finish(key, done, entry, no_store, token)
            return response
        watched = self._watch(call, response.body_iterator, assembler, key, done, no_store, token)
        # A stream the server never starts (its client left first) never runs its `finally`:
        # the followers must not wait on it until their deadline.
        weakref.finalize(watched, self._resolve, key, done, None)
        response.body_iterator = watched
        return response

    async def _watch(self, call, events, assembler: StreamAssembler | None, key, done, no_store: bool, token):
        """Relay a live stream; once it ended whole, store it assembled and wake the followers."""
        entry = None
        try:
            async for event in events:
                yield event
            if assembler is not None and assembler.complete and call.status == 200:
                # Redacted whole as well: a secret the stream's events carried apart is one string here.
                redactor = policy_redactor(call.live.policy)
                body = orjson.dumps(assembler.completion())
                entry = self._entry(call, redactor.bytes(body) if redactor else body)
        finally:
            await events.aclose()
            await self._finish(key, done, entry, no_store, token)

    def _entry(self, call, body: bytes) -> Entry:
        return Entry(body, call.route, float(call.decision.cache.ttl))

    async def _finish(self, key: bytes, done, entry: Entry | None, no_store: bool, token=None) -> None:
        if entry is not None and not no_store and len(entry.body) <= self.max_parsed:
            if self.remote is None:
                self.store(key, entry)
            else:
                await self.remote.store(key, entry)
        if self.semantic is not None:
            self.semantic.settle(key, None if no_store else entry)
        self._resolve(key, done, entry)
        await self._unlock(key, token)

    async def peek(self, key: bytes) -> Entry | None:
        """The stored answer of a key, without waiting or claiming it (None when Redis is down)."""
        if self.remote is None:
            return self.entries.get(key)
        try:
            return await self.remote.get(key)
        except RemoteDown:
            return None

    async def _unlock(self, key: bytes, token: bytes | None) -> None:
        if token is not None:
            await self.remote.unlock(key, token)

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
        if call.captured is not None:
            call.captured = entry.body   # `log full`: the stored answer, as a live stream's assembled one
        events = stream_events(completion, client_asked_usage(call))
        return StreamingResponse(self._replay(call, events), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    async def _replay(self, call, events: list[bytes]):
        try:
            for event in events:
                yield event
        finally:
            await self.gw.finish(call)   # as a live stream does when its last event is sent


# ---- shared entries (--state redis://) -----------------------------------------------------------

LOCK_TTL = 30.0       # seconds at most that one instance holds a key's single flight
POLL_FIRST, POLL_MAX = 0.01, 0.2   # seconds between looks of an instance waiting for another's answer
# One hash tag, so a Redis Cluster keeps the entries, their index and the locks in one slot.
_PREFIX = b"edgerules:{cache}:"
_INDEX = _PREFIX + b"index"
# Store one entry and keep at most ARGV[4] of them: the oldest stored go first (their TTLs end them too).
_STORE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #old, 2 do redis.call('DEL', old[i]) end
end
return over
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RemoteDown(Exception):
    """Redis did not answer: the request goes upstream without the cache."""


class RemoteEntries:
    """Cache entries in Redis, shared by every instance on the same state URI; stored as
    `route NUL body` with the rule's TTL, at most max_entries of them."""

    def __init__(self, shared, max_entries: int, max_bytes: int):
        self.shared, self.max_entries, self.max_bytes = shared, max_entries, max_bytes
        self.client = shared.client
        self._store = self.client.register_script(_STORE)
        self._unlock = self.client.register_script(_UNLOCK)
        self._errors = shared.failures

    async def claim(self, key: bytes, deadline_at: float, budget: float) -> tuple[Entry | None, bytes | None]:
        """(the stored entry, None), or (None, a lock token) when this instance must fetch it; waits
        while another instance holds the key, until the request's deadline."""
        entry_key, lock_key = _PREFIX + key.hex().encode(), _PREFIX + b"lock:" + key.hex().encode()
        token = os.urandom(16).hex().encode()
        lock_ms = max(1, int(min(max(deadline_at - time.monotonic(), 0.001), LOCK_TTL) * 1000))
        delay = POLL_FIRST
        while True:
            entry = await self._guard("reading the cache", self.client.get(entry_key))
            if entry is not None:
                return _decode(entry), None
            if await self._guard("locking a cache key", self.client.set(lock_key, token, nx=True, px=lock_ms)):
                # An answer stored between the look and the lock is still an answer.
                entry = await self._guard("reading the cache", self.client.get(entry_key))
                if entry is None:
                    return None, token
                await self.unlock(key, token)
                return _decode(entry), None
            if time.monotonic() + delay >= deadline_at:
                raise GatewayError(504, f"the request's deadline of {budget:g}s passed while waiting "
                                        f"for an identical request", code="deadline_exceeded")
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    async def get(self, key: bytes) -> Entry | None:
        entry = await self._guard("reading the cache", self.client.get(_PREFIX + key.hex().encode()))
        return _decode(entry) if entry is not None else None

    async def store(self, key: bytes, entry: Entry) -> None:
        value = entry.route.encode() + b"\0" + entry.body
        if len(value) > self.max_bytes or not self.shared.usable():
            return
        try:
            await self._store(keys=[_PREFIX + key.hex().encode(), _INDEX],
                              args=[value, max(1, int(entry.ttl * 1000)), time.time_ns() // 1000, self.max_entries])
        except self._errors as exc:
            self.shared.failed("storing a cache entry", exc)

    async def unlock(self, key: bytes, token: bytes) -> None:
        if not self.shared.usable():
            return   # the lock's TTL ends it
        try:
            await self._unlock(keys=[_PREFIX + b"lock:" + key.hex().encode()], args=[token])
        except self._errors as exc:
            self.shared.failed("releasing a cache lock", exc)

    async def _guard(self, what: str, awaitable):
        if not self.shared.usable():
            awaitable.close()
            raise RemoteDown
        try:
            return await awaitable
        except Exception as exc:
            if not is_failure(exc, self._errors):
                raise
            self.shared.failed(what, exc)
            raise RemoteDown from None


def _decode(value: bytes) -> Entry:
    route, _, body = value.partition(b"\0")
    return Entry(body, route.decode(), 0.0)
