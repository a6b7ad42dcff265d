"""Limits on one storage URI: request rates in a moving window; token and cost budgets reserved at
admission and reconciled with the real usage when the request ends."""
from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass

import orjson
from limits import RateLimitItemPerSecond
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from ..lang.schema import estimate_tokens
from .hedge import hedged_spent
from ..lang.spec import LimitSpec, target_leaves
from .errors import GatewayError
from .memstore import DequeMemoryStorage
from .router import resolve_model
from .shared import is_failure, limits_options
from .usage import ask_stream_usage

log = logging.getLogger("edgerules.gateway")

ENV_RESERVE = "EDGERULES_RESERVE_COMPLETION_TOKENS"
DEFAULT_RESERVE = 256
NANO_USD = 1_000_000_000     # cost budgets count nano-dollars: integer counters, exact enough
_NANO_PER_PRICE = NANO_USD / 1_000_000   # a price is USD per 1M tokens
# Every amount sent to the storage stays far inside a signed 64-bit Redis counter, whatever numbers
# a client or an upstream writes (requests.py refuses absurd max_tokens before this point).
MAX_UNITS = 2**53
MAX_SEEN = 4096             # counters listed by GET /admin/limits
_MAX_BY = 256                # `by` values longer than this are keyed by their digest
_SAME_WINDOW = 1.5           # seconds of slack when matching a window's reset time (Redis TTLs are whole seconds)


def async_uri(uri: str) -> str:
    """The limits library's async form of a storage URI: `redis://h:p` -> `async+redis://h:p`."""
    scheme, sep, _ = uri.partition("://")
    if not sep or not scheme:
        raise ValueError(f"state URI '{uri}' needs a scheme, e.g. memory:// or redis://HOST:PORT")
    return uri if scheme.startswith("async+") else "async+" + uri


def open_storage(state_uri: str, shared=None):
    """The limits storage for a state URI, on the shared Redis pool when there is one (shared.py);
    errors come as limits' StorageError. memory:// keeps its moving windows in deques (memstore.py)."""
    if async_uri(state_uri).partition("://")[0] == "async+memory":
        return DequeMemoryStorage(state_uri, wrap_exceptions=True)
    return storage_from_string(async_uri(state_uri), wrap_exceptions=True, **limits_options(shared))


class Window(RateLimitItemPerSecond):
    """A limit's window, keyed by the limit's stable id and `by` values only, so a reload that keeps
    the limit's kind and window (even with a new amount) keeps what was already counted."""

    def key_for(self, *identifiers: str) -> str:
        return "/".join((self.namespace, *identifiers))


@dataclass(slots=True, eq=False)
class Meter:
    """A limit prepared once for every request that meets it: its window, the fixed head of its
    storage keys, and how it counts (a request limit in a moving window, a budget in fixed ones)."""

    spec: LimitSpec
    window: Window
    moving: bool
    amount: int
    expiry: int
    shape: str        # the kind and window, part of the key (see _by)
    head: str         # the storage key without the `by` part
    limit_text: bytes = b""   # x-ratelimit-limit-<kind>'s value

    @classmethod
    def of(cls, spec: LimitSpec) -> "Meter":
        window = Window(_units(spec), spec.window, namespace="edgerules")
        shape = f"{spec.kind}-{spec.window}s"
        limit_text = (f"{spec.amount:g}" if spec.kind == "cost" else str(int(spec.amount))).encode()
        return cls(spec, window, spec.kind == "requests", window.amount, window.get_expiry(), shape,
                   window.key_for(spec.id, shape, ""), limit_text)

    def ident(self, values: tuple) -> tuple[str, ...]:
        return (self.spec.id, self.shape, _by(values))


@dataclass(slots=True)
class Hold:
    """Budget units taken at admission, to reconcile with the real usage in settle()."""

    spec: LimitSpec
    window: Window
    ident: tuple[str, ...]
    amount: int
    reset: float      # the window's reset time when the hold was taken: refunds go to that window only
    key: str = ""     # the storage key of window and ident


class Limiter:
    def __init__(self, state_uri: str, gw, *, shared=None, completion_reserve: int | None = None):
        self.gw = gw
        self.storage = open_storage(state_uri, shared)
        self._failures = (StorageError, *shared.failures) if shared is not None else StorageError
        self.moving = MovingWindowRateLimiter(self.storage)
        # memory://: moving windows are counted in place, without the storage's coroutines
        self._local = self.storage if isinstance(self.storage, DequeMemoryStorage) else None
        self.fixed = FixedWindowRateLimiter(self.storage)
        if completion_reserve is None:
            completion_reserve = int(os.environ.get(ENV_RESERVE, DEFAULT_RESERVE))
        self.completion_reserve = completion_reserve
        # Keyed by the spec's identity (a spec's own hash walks all its fields); a Meter keeps its
        # spec alive, so an id is not reused while its entry is here.
        self._meters: dict[int, Meter] = {}
        # The counters this process touched, most recent last, for GET /admin/limits (bounded):
        # storage key -> (meter, ident, `by` values, last use).
        self.seen: dict[str, tuple] = {}

    @property
    def settles_in_place(self) -> bool:
        """Whether settling a request's holds waits for nothing (memory://): then it may run after
        the answer is sent without another request seeing the counters before it."""
        return self._local is not None

    async def close(self) -> None:
        self._meters.clear()   # the shared Redis connection is closed by its owner, the Gateway

    # ---- admission ---------------------------------------------------------------------

    async def admit(self, call) -> None:
        """Count the request against every limit it met; 429 or `else route` when one is full."""
        holds: list[Hold] = []
        rerouted = False
        try:
            seen, now, storage, local = self.seen, time.time(), self.storage, self._local
            met = []
            for spec, values in call.decision.limits:
                meter = self._meter(spec)
                ident = meter.ident(values)
                key = meter.head + ident[2]
                met.append((meter, key))
                seen.pop(key, None)
                seen[key] = (meter, ident, values, now)
            while len(seen) > MAX_SEEN:
                del seen[next(iter(seen))]
            for (meter, key), (spec, values) in zip(met, call.decision.limits):
                if meter.moving:
                    # limits' MovingWindowRateLimiter.hit, without its layers
                    admitted = (local.take(key, meter.amount, meter.expiry) if local is not None
                                else await storage.acquire_entry(key, meter.amount, meter.expiry))
                else:
                    ask_stream_usage(call)   # the usage of a streamed answer reconciles budgets
                    admitted = await self._hold(call, meter, key, values, holds)
                if admitted:
                    continue
                self.gw.metrics.limited[spec.rule] += 1
                if spec.else_route is None:
                    raise await self._refusal(call, meter, key, met)
                if not rerouted:   # the first full limit with `else route` picks the target
                    call.target, rerouted = spec.else_route, True
            call.raw_extra = await self._headers(met)
        except BaseException as exc:
            await self._release(holds)
            if not is_failure(exc, self._failures):
                raise
            log.error("limits storage failed: %s", exc)
            raise GatewayError(503, "the limits storage is unavailable", code="limits_unavailable") from None
        call.admission = holds or None

    async def _hold(self, call, meter: Meter, key: str, values: tuple, holds: list) -> bool:
        amount, least = self.estimate(call, meter.spec)
        local = self._local
        if local is not None:   # memory://: the same steps, in place
            if least < amount:
                amount = min(amount, max(least, meter.amount - local.count(key)))
            if local.add(key, meter.expiry, amount) <= meter.amount:
                holds.append(Hold(meter.spec, meter.window, meter.ident(values), amount, local.ends(key), key))
                return True
            local.add(key, meter.expiry, -amount)
            return False
        if least < amount:
            # The completion is a guess: hold no more than the room left, as long as the prompt fits.
            room = meter.amount - await self.storage.get(key)
            amount = min(amount, max(least, room))
        # limits' FixedWindowRateLimiter.hit, without its layers
        if await self.storage.incr(key, meter.expiry, amount=amount) <= meter.amount:
            reset = await self.storage.get_expiry(key)
            holds.append(Hold(meter.spec, meter.window, meter.ident(values), amount, reset, key))
            return True
        await self.storage.incr(key, meter.expiry, amount=-amount)   # a refused hit still counted: take it back
        return False

    def estimate(self, call, spec: LimitSpec) -> tuple[int, int]:
        """(units to hold, the least of them that must fit): the estimated prompt plus the completion
        it may write; when the client set no max_tokens the completion part may shrink to the room left."""
        prompt = estimate_tokens(call.body)
        completion, guessed = self._completion_bound(call)
        if spec.kind == "tokens":
            held = prompt + completion
        else:
            price_in, price_out = self._max_price(call)
            held = math.ceil((prompt * price_in + completion * price_out) * _NANO_PER_PRICE)
            prompt = math.ceil(prompt * price_in * _NANO_PER_PRICE)
        held, prompt = min(held, MAX_UNITS), min(prompt, MAX_UNITS)
        return held, (prompt if guessed else held)

    def _completion_bound(self, call) -> tuple[int, bool]:
        if call.kind != "chat":
            return 0, False
        for name in ("max_completion_tokens", "max_tokens"):
            value = call.body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return min(value, MAX_UNITS), False
        return self.completion_reserve, True

    def _max_price(self, call) -> tuple[float, float]:
        """The dearest price among the targets that may answer: the route is not known yet."""
        requested = call.body.get("model") or ""
        price_in = price_out = 0.0
        for leaf in target_leaves(call.target):
            provider = call.live.providers.get(leaf.provider)
            price = provider.spec.price(resolve_model(leaf, requested)) if provider else None
            if price is not None:
                price_in, price_out = max(price_in, price.input), max(price_out, price.output)
        return price_in, price_out

    async def _release(self, holds: list[Hold]) -> None:
        for hold in holds:
            try:
                await self._refund(hold, hold.amount)
            except self._failures as exc:
                log.error("limits storage failed while releasing a hold: %s", exc)

    # ---- reconciliation ----------------------------------------------------------------

    async def settle(self, call) -> None:
        """Replace each hold by what the request really spent: nothing for cache hits and failures."""
        holds, call.admission = call.admission, None
        if not holds:
            return
        spent_nothing = call.status != 200 or call.cache in ("HIT", "HIT-SEMANTIC")
        for hold in holds:
            actual = 0 if spent_nothing else self.spent(call, hold)
            if call.hedged and not spent_nothing:   # the prompts of the hedge attempts cancelled
                actual = min(actual + hedged_spent(call, hold.spec.kind, _NANO_PER_PRICE), MAX_UNITS)
            if actual > hold.amount:
                if self._local is not None:
                    self._local.add(hold.key, hold.window.get_expiry(), actual - hold.amount)
                else:
                    await self.storage.incr(hold.key, hold.window.get_expiry(), amount=actual - hold.amount)
            elif actual < hold.amount:
                if self._local is not None:
                    self._refund_now(hold, hold.amount - actual)
                else:
                    await self._refund(hold, hold.amount - actual)

    def spent(self, call, hold: Hold) -> int:
        usage = call.usage
        if not isinstance(usage, dict):
            return hold.amount   # no usage came back (a client gone mid-stream): keep the estimate
        prompt = _count(usage, "prompt_tokens", "input_tokens")
        completion = _count(usage, "completion_tokens", "output_tokens")
        if hold.spec.kind == "tokens":
            return min(prompt + completion, MAX_UNITS)
        provider_name, _, model = call.route.partition("/")
        provider = call.live.providers.get(provider_name)
        price = provider.spec.price(model) if provider is not None else None
        if price is None:
            return 0   # a model without a price costs nothing (`edgerules check` warns about it)
        return min(math.ceil((prompt * price.input + completion * price.output) * _NANO_PER_PRICE), MAX_UNITS)

    def _refund_now(self, hold: Hold, amount: int) -> None:
        """_refund() on memory://, in place."""
        local, key = self._local, hold.key
        if abs(local.ends(key) - hold.reset) > _SAME_WINDOW:
            return
        counted = local.count(key)
        if counted > 0:
            local.add(key, hold.window.get_expiry(), -min(amount, counted))

    async def _refund(self, hold: Hold, amount: int) -> None:
        key = hold.key
        # A window that ended took the hold with it; its successor owes nothing back.
        if abs(await self.storage.get_expiry(key) - hold.reset) > _SAME_WINDOW:
            return
        counted = await self.storage.get(key)
        if counted > 0:
            await self.storage.incr(key, hold.window.get_expiry(), amount=-min(amount, counted))

    # ---- answers -----------------------------------------------------------------------

    async def _refusal(self, call, meter: Meter, key: str, met: list) -> GatewayError:
        spec = meter.spec
        stats = await self._stats(meter, key)
        headers = {name.decode(): value.decode() for name, value in await self._headers(met, refused=(meter, stats))}
        retry_after = max(1, math.ceil(stats[0] - time.time()))
        headers["retry-after"] = str(retry_after)
        call.extra_headers.update(headers)
        return GatewayError(429, f"rate limit exceeded: rule '{spec.rule}' allows {_describe(spec)}; "
                                 f"retry in {retry_after}s", code="rate_limit_exceeded", headers=headers)

    async def _headers(self, met: list, refused: tuple | None = None) -> list[tuple[bytes, bytes]]:
        """x-ratelimit-* of the tightest request limit and of the tightest token limit, as the raw
        pairs the answer carries; a limit that refused the request speaks for its kind. `met`:
        (meter, key) of each limit met. On memory:// the counters are read in place."""
        local = self._local
        tightest: dict[str, tuple] = {}
        for meter, key in met:
            if refused is not None and meter is refused[0]:
                (reset, remaining), rank = refused[1], (-1, 0)
            else:
                reset, remaining = self._stats_now(meter, key) if local is not None else await self._stats(meter, key)
                rank = (remaining, meter.spec.amount)
            kind = meter.spec.kind
            best = tightest.get(kind)
            if best is None or rank < best[0]:
                tightest[kind] = (rank, meter, remaining, reset)
        now = time.time()
        out = []
        for kind, (_, meter, remaining, reset) in tightest.items():
            limit_name, remaining_name, reset_name = _HEADER_NAMES[kind]
            left = (usd(max(0, remaining) / NANO_USD).encode() if kind == "cost"   # in USD, as written
                    else b"%d" % max(0, int(remaining)))
            out += ((limit_name, meter.limit_text), (remaining_name, left),
                    (reset_name, format_reset(max(0.0, reset - now)).encode()))
        return out

    async def counters(self) -> list[dict]:
        """Every counter this process used whose window is still open, with the room left in it."""
        now = time.time()
        out = []
        for key, (meter, ident, values, last) in list(self.seen.items()):
            spec = meter.spec
            if now - last > spec.window:
                self.seen.pop(key, None)   # its window ended: the counter is gone
                continue
            reset, remaining = await self._stats(meter, key)
            scale = NANO_USD if spec.kind == "cost" else 1
            limit = spec.amount if spec.kind == "cost" else int(spec.amount)
            left = max(0, remaining) / scale if spec.kind == "cost" else max(0, int(remaining))
            out.append({"rule": spec.rule, "kind": spec.kind, "window_seconds": spec.window,
                        "by": [str(v) for v in values], "limit": limit, "remaining": left,
                        "used": (limit - left) if spec.kind == "cost" else limit - left,
                        "reset_in_seconds": round(max(0.0, reset - now), 3)})
        return out

    def _stats_now(self, meter: Meter, key: str) -> tuple[float, float]:
        """_stats() on memory://, in place."""
        local = self._local
        if meter.moving:
            start, count = local.window(key, meter.expiry)
            return start + meter.expiry, meter.amount - count
        return local.ends(key), max(0, meter.amount - local.count(key))

    async def _stats(self, meter: Meter, key: str) -> tuple[float, float]:
        """(reset time, remaining) of one limit's counter: limits' get_window_stats, without its layers."""
        if meter.moving:
            start, count = await self.storage.get_moving_window(key, meter.amount, meter.expiry)
            return start + meter.expiry, meter.amount - count
        remaining = max(0, meter.amount - await self.storage.get(key))
        return await self.storage.get_expiry(key), remaining

    def _meter(self, spec: LimitSpec) -> Meter:
        meter = self._meters.get(id(spec))
        if meter is None or meter.spec is not spec:
            if len(self._meters) > 4096:   # specs of old policy versions
                self._meters.clear()
            meter = self._meters[id(spec)] = Meter.of(spec)
        return meter


_HEADER_NAMES = {kind: (f"x-ratelimit-limit-{kind}".encode(), f"x-ratelimit-remaining-{kind}".encode(),
                        f"x-ratelimit-reset-{kind}".encode()) for kind in ("requests", "tokens", "cost")}


def _units(spec: LimitSpec) -> int:
    return round(spec.amount * NANO_USD) if spec.kind == "cost" else int(spec.amount)


def _by(values: tuple) -> str:
    """The `by` part of a counter's key. Its kind and window are in the key too (Meter.shape):
    Redis keeps a moving window as a list and a budget as a number, so a limit that changes shape
    must not meet its old counter."""
    if not values:
        return "*"
    by = orjson.dumps(list(values)).decode()
    if len(by) > _MAX_BY:   # a client-chosen value (a header, the user) must not make storage keys huge
        by = "sha256:" + hashlib.sha256(by.encode()).hexdigest()
    return by


def _count(usage: dict, *names: str) -> int:
    for name in names:
        value = usage.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(min(max(value, 0), MAX_UNITS))
    return 0


def _describe(spec: LimitSpec) -> str:
    per = _window_text(spec.window)
    if spec.kind == "cost":
        return f"${spec.amount:g} per {per}"
    return f"{int(spec.amount)} {spec.kind} per {per}"


def _window_text(seconds: int) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def usd(amount: float) -> str:
    """Dollars as headers carry them: up to 9 decimals, no trailing zeros."""
    return f"{amount:.9f}".rstrip("0").rstrip(".") or "0"


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes its reset headers: `20ms`, `1.5s`, `6m0s`, `1h2m3s`."""
    millis = max(0, round(seconds * 1000))
    if millis < 1000:
        return f"{millis}ms"
    minutes, millis = divmod(millis, 60_000)
    hours, minutes = divmod(minutes, 60)
    whole, part = divmod(millis, 1000)
    text = f"{whole}.{part:03d}".rstrip("0") + "s" if part else f"{whole}s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text
