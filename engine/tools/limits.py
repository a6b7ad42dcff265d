"""`limit calls N per D [by ...]`: a moving window per limit and `by` values, on the gateway's
limits storage (memory:// or the Redis of --state), so a limit holds across workers and instances."""
from __future__ import annotations

import hashlib
import logging
import math
import time

import orjson
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from ..gateway.limiter import Window

log = logging.getLogger("edgerules.tools")
_MAX_BY = 256


class ToolLimits:
    def __init__(self, gw):
        self.gw = gw
        self._moving = None
        self._windows: dict = {}

    def _limiter(self) -> MovingWindowRateLimiter | None:
        limiter = self.gw.limiter
        if limiter is None:
            return None
        if self._moving is None or self._moving.storage is not limiter.storage:
            self._moving = MovingWindowRateLimiter(limiter.storage)
        return self._moving

    async def admit(self, decision) -> str | None:
        """None when every limit the call met has room (the call is counted), else the message."""
        if not decision.limits:
            return None
        moving = self._limiter()
        if moving is None:
            return None
        try:
            for spec, values in decision.limits:
                window = self._window(spec)
                ident = _ident(spec, values)
                if await moving.hit(window, *ident):
                    continue
                self.gw.metrics.limited[spec.rule] += 1
                stats = await moving.get_window_stats(window, *ident)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                return (f"rate limit exceeded: rule '{spec.rule}' allows {int(spec.amount)} calls per "
                        f"{spec.window}s; retry in {retry}s")
        except StorageError as exc:
            log.error("limits storage failed: %s", exc)
            return "the limits storage is unavailable; retry later"
        return None

    def _window(self, spec) -> Window:
        window = self._windows.get(spec)
        if window is None:
            if len(self._windows) > 4096:
                self._windows.clear()
            window = self._windows[spec] = Window(int(spec.amount), spec.window, namespace="edgerules")
        return window


def _ident(spec, values: tuple) -> tuple[str, ...]:
    by = orjson.dumps(list(values)).decode() if values else "*"
    if len(by) > _MAX_BY:
        by = "sha256:" + hashlib.sha256(by.encode()).hexdigest()
    return ("tool:" + spec.id, f"calls-{spec.window}s", by)
