"""Retry delays: the three backoff shapes, the cap, full jitter, and upstream Retry-After."""
from __future__ import annotations

import random

from ..lang.spec import RetrySpec


def retry_delay(spec: RetrySpec, k: int, retry_after: float | None = None,
                rng: random.Random | None = None) -> float:
    """Seconds to wait before retry k (1-based).

    An upstream Retry-After shorter than the cap replaces the computed delay; a longer one is
    ignored (the capped backoff is used), so one slow upstream cannot stall the whole chain.
    """
    if retry_after is not None and 0 <= retry_after < spec.max_delay:
        return retry_after
    delay = spec.delay_for(k)
    if spec.jitter:
        delay = (rng or random).uniform(0.0, delay)
    return delay


def is_retryable(spec: RetrySpec | None, status: int | None, kind: str) -> bool:
    if spec is None:
        return False
    if kind == "stream":
        kind = "connect"   # failed before the first byte reached the client: same as a dropped connection
    if kind not in ("status", "timeout", "connect"):
        return False
    return spec.retries_on(status, kind)
