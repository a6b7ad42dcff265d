"""A provider's key pool (`api_key [k1, k2, ...]`): which key a call uses, each key's own limits on
the limiter's storage, and the cooldown of a key the upstream refused (429, 401, 403)."""
from __future__ import annotations

import logging
import time

from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError

from ..lang.schema import estimate_tokens
from ..lang.spec import ProviderSpec
from .limiter import Window, open_storage
from .providers.base import ProviderError, UpstreamResponse

log = logging.getLogger("edgerules.gateway")

COOL_429 = 10.0          # seconds a 429 without Retry-After cools its key
COOL_401 = 600.0         # a rejected key (401, 403) does not heal soon: a reload with a new key does
MAX_COOL = 3600.0        # an absurd Retry-After is capped
STREAM_COMPLETION = 256  # tokens counted for a streamed answer's completion (its usage is not seen here)
ROOM_REFRESH = 0.25      # seconds between reads of every key's room from the storage (most_room)


class KeyPool:
    """The keys of one provider client. `gw` (the Gateway, for its limiter storage and metrics) is
    bound by Gateway.install; unbound (a provider used alone) the limits use a memory storage."""

    def __init__(self, spec: ProviderSpec, headers: dict[str, str]):
        self.provider = spec.name
        self.keys = spec.key_pool
        self.round_robin = spec.key_pick == "round_robin"
        first = spec.api_key or ""
        # The provider's own headers with the first key's value swapped for each key's: whatever
        # header a format puts its key in (authorization, x-api-key, api-key, x-goog-api-key).
        self.headers = tuple({name: value.replace(first, key.secret) if first else value
                              for name, value in headers.items()} for key in self.keys)
        self.cool_until = [0.0] * len(self.keys)
        self.turn = 0
        self.limited = any(k.requests or k.tokens for k in self.keys)
        self.windows = tuple((self._window(k, "requests"), self._window(k, "tokens")) for k in self.keys)
        self.gw = None
        self._own = None
        # most_room ranks keys by a local copy of their room (share of requests and of tokens
        # left), read from the storage every ROOM_REFRESH and lowered by this process's own calls
        # in between: a storage read per key per call cost ~20 us a key.
        self.rooms = [[1.0, 1.0] for _ in self.keys]
        self.rooms_at = float("-inf")

    def _window(self, key, kind: str) -> tuple[Window, tuple[str, ...]] | None:
        limit = getattr(key, kind)
        if limit is None:
            return None
        amount, seconds = limit
        # Keyed by provider, key name and shape: a reload that keeps them keeps what was counted.
        return (Window(amount, int(seconds), namespace="edgerules"),
                ("pool", self.provider, key.name, f"{kind}-{int(seconds)}s"))

    def _strategies(self) -> tuple[MovingWindowRateLimiter, FixedWindowRateLimiter]:
        limiter = self.gw.limiter if self.gw is not None else None
        if limiter is not None:
            return limiter.moving, limiter.fixed
        if self._own is None:
            storage = open_storage("memory://")
            self._own = (MovingWindowRateLimiter(storage), FixedWindowRateLimiter(storage))
        return self._own

    # ---- picking ------------------------------------------------------------------------

    async def take(self, tried: set[int]) -> int | None:
        """The key for the next attempt, counted against its request limit; None when every key
        not yet tried is cooling down or full."""
        now = time.monotonic()
        n = len(self.keys)
        start, self.turn = self.turn, (self.turn + 1) % n
        order = [i % n for i in range(start, start + n)
                 if i % n not in tried and self.cool_until[i % n] <= now]
        if not self.limited:
            return order[0] if order else None
        try:
            return await self._take_limited(order)
        except StorageError as exc:   # the limits storage is down: the keys are used unlimited
            log.error("limits storage failed for the key pool of provider '%s': %s", self.provider, exc)
            return order[0] if order else None

    async def _take_limited(self, order: list[int]) -> int | None:
        moving, fixed = self._strategies()
        if not self.round_robin:   # most room first; ties keep the rotation, so keys take turns
            now = time.monotonic()
            if now - self.rooms_at > ROOM_REFRESH:
                self.rooms_at = now
                self.rooms = [await self._room(i, moving, fixed) for i in range(len(self.keys))]
            rooms = self.rooms
            order.sort(key=lambda i: -min(rooms[i]))
        for i in order:
            requests, tokens = self.windows[i]
            if tokens is not None and (await fixed.get_window_stats(tokens[0], *tokens[1])).remaining <= 0:
                continue
            if requests is not None:
                if not await moving.hit(requests[0], *requests[1]):
                    self.rooms[i][0] = 0.0
                    continue
                self.rooms[i][0] -= 1 / requests[0].amount
            return i
        return None

    async def _room(self, i: int, moving, fixed) -> list[float]:
        """The share of each of its limits a key has left: [requests, tokens]; 1 without one."""
        room = [1.0, 1.0]
        for kind, (window, strategy) in enumerate(zip(self.windows[i], (moving, fixed))):
            if window is not None:
                stats = await strategy.get_window_stats(window[0], *window[1])
                room[kind] = max(0, stats.remaining) / window[0].amount
        return room

    # ---- outcomes -----------------------------------------------------------------------

    def cool(self, i: int, exc: ProviderError) -> None:
        status = exc.upstream_status or exc.status
        seconds = (exc.retry_after if exc.retry_after is not None else COOL_429) if status == 429 else COOL_401
        self.cool_until[i] = max(self.cool_until[i], time.monotonic() + min(seconds, MAX_COOL))
        log.warning("key %s of provider '%s' answered %d: cooling it down for %gs",
                    self.keys[i].name, self.provider, status, min(seconds, MAX_COOL))
        self.count(i, str(status))

    async def spent(self, i: int, payload: dict, result) -> None:
        """Count a served call: its outcome, and its tokens against the key's token limit."""
        self.count(i, "ok")
        if isinstance(result, bytes):
            try:
                usage = UpstreamResponse(200, result).usage() or {}
            except Exception:   # not JSON: the provider says so to the caller
                usage = {}
            tokens = sum(v for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")
                         if isinstance(v := usage.get(k), int) and not isinstance(v, bool) and v > 0)
        else:   # a stream: its usage comes at its end, past this point; counted by estimate
            bound = payload.get("max_tokens") or payload.get("max_completion_tokens")
            tokens = estimate_tokens(payload) + (bound if isinstance(bound, int) and bound > 0 else STREAM_COMPLETION)
        if self.gw is not None:
            self.gw.metrics.pool_tokens[(self.provider, self.keys[i].name)] += tokens
        window = self.windows[i][1]
        if window is not None and tokens:
            self.rooms[i][1] -= tokens / window[0].amount
            try:
                await self._strategies()[1].hit(window[0], *window[1], cost=tokens)
            except StorageError as exc:
                log.error("limits storage failed for the key pool of provider '%s': %s", self.provider, exc)

    async def serve_offline(self, provider, payload: dict, raw: bytes) -> None:
        """A provider that calls nothing (echo): the pick, the limits and the metrics of a call."""
        i = await self.take(set())
        if i is None:
            raise self.exhausted(provider, None)
        await self.spent(i, payload, raw)

    def count(self, i: int, outcome: str) -> None:
        if self.gw is not None:
            self.gw.metrics.pool_calls[(self.provider, self.keys[i].name, outcome)] += 1

    def exhausted(self, provider, last: ProviderError | None) -> ProviderError:
        """The error when no key is left: the last refusal, else a 429 until the first key is free."""
        if last is not None:
            return last
        wait = max(0.0, min(self.cool_until) - time.monotonic())
        return provider.error(429, f"every key of provider '{self.provider}' is cooling down or at its own "
                                   f"limit", retry_after=max(1.0, wait), upstream_status=429)


def bind_pools(providers, gw) -> None:
    """Give the key pools of these provider clients the gateway's limiter storage and metrics."""
    for provider in providers:
        pool = getattr(provider, "pool", None)
        if pool is not None:
            pool.gw = gw
