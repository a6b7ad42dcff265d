"""Retry delays exactly as LANGUAGE.md defines them, and which failures are retried."""
from __future__ import annotations

import random

import pytest

from edgerules.gateway.retry import is_retryable, retry_delay
from edgerules.lang.spec import RetrySpec


@pytest.mark.parametrize("shape, expected", [
    ("constant", [0.1, 0.1, 0.1, 0.1, 0.1]),
    ("linear", [0.1, 0.2, 0.3, 0.4, 0.5]),
    ("exponential", [0.1, 0.2, 0.4, 0.8, 1.6]),
])
def test_backoff_shapes(shape, expected):
    spec = RetrySpec(5, shape, 0.1, 5.0)
    assert [round(retry_delay(spec, k), 6) for k in range(1, 6)] == expected


def test_cap_applies_to_every_shape():
    spec = RetrySpec(5, "exponential", 1.0, 3.0)
    assert [retry_delay(spec, k) for k in range(1, 6)] == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_full_jitter_draws_from_zero_to_the_delay():
    spec = RetrySpec(5, "exponential", 0.4, 5.0, jitter=True)
    rng = random.Random(1)
    draws = [retry_delay(spec, 2, rng=rng) for _ in range(2000)]
    assert all(0.0 <= d <= 0.8 for d in draws)
    assert min(draws) < 0.1 and max(draws) > 0.7      # spread over the whole range


def test_retry_after_is_honoured_only_below_the_cap():
    spec = RetrySpec(3, "constant", 0.1, 2.0)
    assert retry_delay(spec, 1, retry_after=1.5) == 1.5
    assert retry_delay(spec, 1, retry_after=10.0) == 0.1


def test_which_failures_are_retried():
    spec = RetrySpec(2, on=frozenset({"429", "5xx", "timeout"}))
    assert is_retryable(spec, 503, "status") and is_retryable(spec, 429, "status")
    assert not is_retryable(spec, 400, "status")
    assert is_retryable(spec, None, "timeout")
    assert not is_retryable(spec, None, "connect")
    assert not is_retryable(None, 503, "status")
    assert is_retryable(RetrySpec(1), None, "stream")   # default codes include connect
