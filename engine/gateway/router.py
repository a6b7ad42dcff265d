"""Routing: turn a target tree into the ordered list of (provider, model) attempts.

Health (circuit breakers and recent latency) is keyed by provider name, not by object, so it
carries over a policy reload for every provider that still exists.
"""
from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field

from ..lang.spec import Fallback, Fastest, ProviderSpec, Single, Split, Target

EWMA_ALPHA = 0.3
MAX_LATENCY_MODELS = 256   # per provider


@dataclass(slots=True)
class ProviderHealth:
    failures: int = 0              # consecutive failures
    open_until: float = 0.0        # circuit open (in cooldown) until this monotonic time
    latency: dict[str, float] = field(default_factory=dict)   # model -> EWMA seconds

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

    def record_failure(self, spec: ProviderSpec, now: float) -> bool:
        """Count one failure; True when this one opened the circuit."""
        self.failures += 1
        if self.failures >= spec.failures and self.available(now):
            self.open_until = now + spec.cooldown
            return True
        return False


class Health:
    def __init__(self):
        self.providers: dict[str, ProviderHealth] = {}

    def of(self, name: str) -> ProviderHealth:
        h = self.providers.get(name)
        if h is None:
            h = self.providers[name] = ProviderHealth()
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
