"""Routing: turn a target tree into the ordered list of (provider, model) attempts.

Health (circuit breakers and recent latency) is keyed by provider name, not by object, so it
carries over a policy reload for every provider that still exists.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field

from ..lang.spec import Fallback, Fastest, Hedge, ProviderSpec, Single, Split, Target

log = logging.getLogger("edgerules.gateway")

EWMA_ALPHA = 0.3
SYNC_EVERY = 0.5           # seconds between reads of the shared breakers (with --state redis://)
FAILURES_TTL_MS = 600_000  # a shared failure count no instance touched for 10 minutes is dropped
_BREAKER = "edgerules:{breaker}:"   # one hash tag: a Redis Cluster keeps every breaker key in one slot
# Raise a shared failure count to at least ARGV[1] (what one process counted while Redis was away).
_RAISE_FAILURES = """
local now = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > now then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return now
"""
MAX_LATENCY_MODELS = 256   # per provider
LATENCY_SAMPLES = 200      # recent answers per model a hedge's `after pNN` is read from
MIN_SAMPLES = 20           # fewer than this: the percentile is not known yet


@dataclass(slots=True)
class ProviderHealth:
    failures: int = 0              # consecutive failures
    open_until: float = 0.0        # circuit open (in cooldown) until this monotonic time
    latency: dict[str, float] = field(default_factory=dict)   # model -> EWMA seconds
    # model -> recent seconds; kept only once a hedge asked for a percentile of this provider
    samples: dict[str, deque] | None = None

    def available(self, now: float) -> bool:
        return now >= self.open_until

    def record_success(self, model: str, seconds: float) -> None:
        self.failures = 0
        self.open_until = 0.0
        latency = self.latency
        old = latency.get(model)
        if old is None:
            # Pass-through models are the client's choice: keep the most recent few, not every one.
            if len(latency) >= MAX_LATENCY_MODELS:
                del latency[next(iter(latency))]
            latency[model] = seconds
        else:
            latency[model] = old + EWMA_ALPHA * (seconds - old)
        if self.samples is not None:
            recent = self.samples.get(model)
            if recent is None:
                if len(self.samples) >= MAX_LATENCY_MODELS:
                    del self.samples[next(iter(self.samples))]
                recent = self.samples[model] = deque(maxlen=LATENCY_SAMPLES)
            recent.append(seconds)

    def percentile(self, model: str, p: float) -> float | None:
        """The p-th percentile of this model's recent latencies; None until MIN_SAMPLES answers
        were seen (the first call starts keeping them)."""
        if self.samples is None:
            self.samples = {}
        recent = self.samples.get(model)
        if recent is None or len(recent) < MIN_SAMPLES:
            return None
        ordered = sorted(recent)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    def record_failure(self, spec: ProviderSpec, now: float) -> bool:
        """Count one failure; True when this one opened the circuit."""
        self.failures += 1
        if self.failures >= spec.failures and self.available(now):
            self.open_until = now + spec.cooldown
            return True
        return False


class Health:
    """Per provider health. Alone it lives in this process; after share(), the consecutive-failure
    count and the open circuit also live in Redis, so every instance sees one provider's circuit:
    writes go out in the background, reads come from a local copy refreshed every SYNC_EVERY."""

    def __init__(self):
        self.providers: dict[str, ProviderHealth] = {}
        self.shared = None
        self._sync_task: asyncio.Task | None = None
        self._pushes: set[asyncio.Task] = set()
        self._raise_failures = None

    def of(self, name: str) -> ProviderHealth:
        h = self.providers.get(name)
        if h is None:
            h = self.providers[name] = (ProviderHealth() if self.shared is None else SharedProviderHealth(self, name))
        return h

    def available(self, name: str, now: float) -> bool:
        h = self.providers.get(name)
        return h is None or h.available(now)

    def latency(self, leaf: Single, requested: str) -> float:
        h = self.providers.get(leaf.provider)
        if h is None:
            return 0.0
        return h.latency.get(resolve_model(leaf, requested), 0.0)

    def forget(self, names) -> None:
        for name in list(self.providers):
            if name not in names:
                del self.providers[name]

    def snapshot(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        return {name: {"open": not h.available(now), "failures": h.failures,
                       "latency_ms": {m: round(s * 1000, 3) for m, s in h.latency.items()}}
                for name, h in self.providers.items()}

    # ---- shared breakers (--state redis://) ----------------------------------------------

    def share(self, shared, names) -> None:
        """Keep breakers in Redis from now on, for the providers `names` (and any met later)."""
        self.shared = shared
        self.providers = {name: SharedProviderHealth(self, name) for name in names}
        self._raise_failures = shared.client.register_script(_RAISE_FAILURES)
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, *self._pushes, return_exceptions=True)

    def push(self, coro) -> None:
        """Run a Redis write in the background: a breaker never makes a request wait or fail."""
        task = asyncio.get_running_loop().create_task(coro)
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(SYNC_EVERY)
            await self.sync()

    async def sync(self) -> None:
        """Copy every known provider's shared failure count and open circuit into this process,
        after pushing what this process recorded while Redis was unreachable."""
        shared = self.shared
        names = list(self.providers)
        if not names or not shared.usable():
            return
        keys = [k for n in names for k in (_BREAKER + n + ":failures", _BREAKER + n + ":open")]
        try:
            for h in [h for h in self.providers.values() if h.unsynced]:
                await h.push_local(self._raise_failures)
            if shared.cluster:
                values = await shared.client.mget_nonatomic(keys)
            else:
                values = await shared.client.mget(keys)
        except Exception as exc:   # redis errors, OSError, timeouts: keep the local state
            shared.failed("reading circuit breakers", exc)
            return
        now, wall = time.monotonic(), time.time()
        for i, name in enumerate(names):
            h = self.providers.get(name)
            if h is not None:
                h.adopt(values[2 * i], values[2 * i + 1], now, wall)


class SharedProviderHealth(ProviderHealth):
    """A provider's health whose breaker is also written to Redis (see Health.share)."""

    __slots__ = ("health", "name", "offline_until", "unsynced")

    def __init__(self, health: Health, name: str):
        super().__init__()
        self.health, self.name = health, name
        self.offline_until = 0.0   # a circuit this process opened while Redis was unreachable
        self.unsynced = False      # a failure went unwritten: push_local() once Redis answers

    def record_success(self, model: str, seconds: float) -> None:
        tripped = self.failures or self.open_until
        super().record_success(model, seconds)
        self.offline_until = 0.0
        if tripped:   # a success after failures closes the circuit everywhere; else nothing to write
            self.health.push(self._write_success())

    def record_failure(self, spec: ProviderSpec, now: float) -> bool:
        opened = super().record_failure(spec, now)
        self.health.push(self._write_failure(spec))
        return opened

    def adopt(self, failures, open_until, now: float, wall: float) -> None:
        """Take the shared values (bytes or None) read from Redis."""
        self.failures = int(failures) if failures is not None else 0
        until = float(open_until) if open_until is not None else 0.0
        shared = now + (until - wall) if until > wall else 0.0
        self.open_until = max(shared, self.offline_until) if self.offline_until > now else shared

    async def _write_success(self) -> None:
        shared = self.health.shared
        if not shared.usable():
            return
        try:
            await shared.client.delete(_BREAKER + self.name + ":failures", _BREAKER + self.name + ":open")
        except Exception as exc:
            shared.failed("closing a circuit breaker", exc)

    async def push_local(self, raise_failures) -> None:
        """Write the failures counted and the circuit opened here while Redis was unreachable: the
        count raises the shared one, the circuit opens for every instance for the rest of its cooldown
        (unless one is already open there: NX keeps it, as for a circuit opened with Redis up)."""
        key = _BREAKER + self.name
        self.unsynced = False   # a write that fails below sets it again
        try:
            if self.failures:
                await raise_failures(keys=[key + ":failures"], args=[self.failures, FAILURES_TTL_MS])
            left = self.open_until - time.monotonic()
            if left > 0 and await self.health.shared.client.set(
                    key + ":open", repr(time.time() + left), nx=True, px=max(1, int(left * 1000))):
                log.warning("circuit for provider '%s', opened while Redis was unreachable, now open for "
                            "every instance for the rest of its cooldown (%.0fs)", self.name, left)
        except BaseException:
            self.unsynced = True
            raise

    async def _write_failure(self, spec: ProviderSpec) -> None:
        shared = self.health.shared
        if not shared.usable():
            self.offline_until = self.open_until
            self.unsynced = True
            return
        key = _BREAKER + self.name
        try:
            client = shared.client
            failures = await client.incr(key + ":failures")
            await client.pexpire(key + ":failures", FAILURES_TTL_MS)
            if failures >= spec.failures:
                # NX: the first instance to see the threshold opens the circuit; the others keep its time.
                until = time.time() + spec.cooldown
                if await client.set(key + ":open", repr(until), nx=True, px=max(1, int(spec.cooldown * 1000))):
                    log.warning("circuit for provider '%s' opened for every instance for %gs", self.name, spec.cooldown)
                else:
                    stored = await client.get(key + ":open")
                    until = float(stored) if stored is not None else until
            else:
                until = 0.0
        except Exception as exc:
            shared.failed("recording a provider failure", exc)
            self.offline_until = self.open_until
            self.unsynced = True
            return
        self.failures = max(self.failures, failures)
        now, wall = time.monotonic(), time.time()
        if until > wall:
            self.open_until = max(self.open_until, now + (until - wall))


def resolve_model(leaf: Single, requested: str) -> str:
    """A pass-through target takes the requested model, minus a leading "provider/"."""
    if leaf.model is not None:
        return leaf.model
    prefix = leaf.provider + "/"
    return requested[len(prefix):] if requested.startswith(prefix) else requested


def plan(target: Target, requested: str, route_by: dict | None, health: Health,
         now: float, rng: random.Random | None = None) -> list[tuple[str, str]]:
    """The (provider, model) pairs to try, in order."""
    out: list[tuple[str, str]] = []
    _plan(target, requested, route_by or {}, health, now, rng or random, out)
    return out


def _plan(target, requested, route_by, health, now, rng, out) -> None:
    if isinstance(target, Single):
        out.append((target.provider, resolve_model(target, requested)))
    elif isinstance(target, Fallback):
        for member in _healthy_first(target.members, health, now):
            _plan(member, requested, route_by, health, now, rng, out)
    elif isinstance(target, Split):
        member = target.members[_pick(target, route_by.get(target.node_id), rng)]
        _plan(member, requested, route_by, health, now, rng, out)
    elif isinstance(target, Fastest):
        healthy = [m for m in target.members if _member_available(m, health, now)]
        rest = [m for m in target.members if m not in healthy]
        healthy.sort(key=lambda m: _member_latency(m, requested, health))
        for member in healthy + rest:
            _plan(member, requested, route_by, health, now, rng, out)
    elif isinstance(target, Hedge):
        lanes = []
        for member in _healthy_first(target.members, health, now):
            lane: list = []
            _plan(member, requested, route_by, health, now, rng, lane)
            lanes.append(lane)
        out.append(HedgePlan(target, lanes))


class HedgePlan:
    """A planned hedge: its lanes (each a list of steps, as plan() returns) raced by hedge.race."""

    __slots__ = ("hedge", "lanes")

    def __init__(self, hedge: Hedge, lanes: list[list]):
        self.hedge, self.lanes = hedge, lanes

    def __repr__(self) -> str:
        return f"HedgePlan({self.lanes!r})"

    def first_leaf(self, lane: int) -> tuple[str, str] | None:
        """The (provider, model) a lane tries first: the one whose latency its delay is read from."""
        step = self.lanes[lane][0] if self.lanes[lane] else None
        while isinstance(step, HedgePlan):
            step = step.lanes[0][0] if step.lanes and step.lanes[0] else None
        return step


def _healthy_first(members, health: Health, now: float):
    """A fallback skips members in cooldown, unless all of them are."""
    healthy = [m for m in members if _member_available(m, health, now)]
    return healthy if healthy else list(members)


def _member_available(member: Target, health: Health, now: float) -> bool:
    if isinstance(member, Single):
        return health.available(member.provider, now)
    return any(_member_available(m, health, now) for m in member.members)


def _member_latency(member: Target, requested: str, health: Health) -> float:
    if isinstance(member, Single):
        return health.latency(member, requested)
    return min(_member_latency(m, requested, health) for m in member.members)


def _pick(split: Split, sticky: tuple | None, rng) -> int:
    if sticky is not None:
        seed = repr((split.node_id, sticky)).encode()
        point = int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest(), "big") / 2**64 * 100
    else:
        point = rng.random() * 100
    total = 0.0
    for i, weight in enumerate(split.weights):
        total += weight
        if point < total:
            return i
    return len(split.weights) - 1
