"""Shared fixtures: a fake upstream process per test module."""
from __future__ import annotations

import pytest

from procs import start_upstream


@pytest.fixture(scope="module")
def upstream():
    """A real `edgerules upstream` on 127.0.0.1, one per test module."""
    with start_upstream() as up:
        yield up
