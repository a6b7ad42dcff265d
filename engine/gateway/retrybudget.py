"""Retry budgets: retries, fallbacks and hedges may add at most a share of the recent requests.

Finagle's RetryBudget, per worker: over the last RETRY_BUDGET_WINDOW seconds, the extra attempts
(every attempt of a request after its first) stay within `percent` of the first attempts plus
`floor` per second of the window. The gateway-wide budget counts every request; a provider's own
budget counts the first attempts sent to it and the extra attempts sent to it (a fallback onto a
provider draws on that provider's budget). Counts live in one-second buckets, so a check is a few
additions; nothing is kept for a policy without a budget.
"""
from __future__ import annotations

import time

from ..lang.spec import RETRY_BUDGET_WINDOW

GATEWAY = ""   # the key of the gateway-wide budget (a provider name is never empty)
_SLOTS = int(RETRY_BUDGET_WINDOW)


class Window:
    """Counts of first and extra attempts in one-second buckets over the last window."""

    __slots__ = ("firsts", "extras", "seconds")

    def __init__(self):
        self.firsts = [0] * _SLOTS
        self.extras = [0] * _SLOTS
        self.seconds = [0] * _SLOTS    # which second each bucket holds

    def _bucket(self, now: float) -> int:
        second = int(now)
        i = second % _SLOTS
        if self.seconds[i] != second:
            self.seconds[i], self.firsts[i], self.extras[i] = second, 0, 0
        return i

    def first(self, now: float) -> None:
        self.firsts[self._bucket(now)] += 1

    def room(self, spec, now: float) -> bool:
        """True when one more extra attempt fits the budget."""
        self._bucket(now)
        oldest = int(now) - _SLOTS + 1
        firsts = extras = 0
        for i in range(_SLOTS):
            if self.seconds[i] >= oldest:
                firsts += self.firsts[i]
                extras += self.extras[i]
        return extras + 1 <= firsts * spec.percent / 100 + spec.floor * RETRY_BUDGET_WINDOW

    def extra(self, now: float) -> None:
        self.extras[self._bucket(now)] += 1


class RetryBudgets:
    """Every budget of this worker, keyed by GATEWAY or provider name (kept over reloads)."""

    def __init__(self, metrics=None):
        self.windows: dict[str, Window] = {}
        self.metrics = metrics
        self._policy = None
        self._active = False

    def active(self, policy) -> bool:
        """Whether the policy declares any budget (computed once per policy)."""
        if policy is not self._policy:
            self._policy = policy
            self._active = policy.retry_budget is not None or any(
                spec.retry_budget is not None for spec in policy.providers.values())
        return self._active

    def _window(self, name: str) -> Window:
        window = self.windows.get(name)
        if window is None:
            window = self.windows[name] = Window()
        return window

    def first(self, policy, provider: str) -> None:
        """A request's first attempt, sent to `provider`."""
        now = time.monotonic()
        if policy.retry_budget is not None:
            self._window(GATEWAY).first(now)
        spec = policy.providers.get(provider)
        if spec is not None and spec.retry_budget is not None:
            self._window(provider).first(now)

    def allow_extra(self, policy, provider: str) -> bool:
        """Take room for one extra attempt to `provider`; False (and counted) when a budget is spent."""
        now = time.monotonic()
        spec = policy.providers.get(provider)
        own = spec.retry_budget if spec is not None else None
        top = policy.retry_budget
        if top is not None and not self._window(GATEWAY).room(top, now):
            self._refused("gateway")
            return False
        if own is not None and not self._window(provider).room(own, now):
            self._refused(provider)
            return False
        if top is not None:
            self._window(GATEWAY).extra(now)
        if own is not None:
            self._window(provider).extra(now)
        return True

    def _refused(self, budget: str) -> None:
        if self.metrics is not None:
            self.metrics.retry_budget[budget] += 1

    def status(self, policy) -> dict:
        """Each budget of the policy with the counts of its window: for GET /admin/policy."""
        now = time.monotonic()
        oldest = int(now) - _SLOTS + 1
        out = {}
        budgets = [(GATEWAY, policy.retry_budget)] + [(n, s.retry_budget) for n, s in policy.providers.items()]
        for name, spec in budgets:
            if spec is None:
                continue
            window = self.windows.get(name)
            live = [(f, e) for f, e, sec in zip(window.firsts, window.extras, window.seconds) if sec >= oldest] \
                if window is not None else []
            out[name or "gateway"] = {**spec.to_dict(), "requests": sum(f for f, _ in live),
                                      "extra_attempts": sum(e for _, e in live)}
        return out
