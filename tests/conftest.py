"""Shared fixtures: a fake upstream per test module, and factories of upstreams and gateways per test."""
from __future__ import annotations

import pytest

from gw import start_gateway
from procs import start_upstream


@pytest.fixture(scope="module")
def upstream():
    """A real `edgerules upstream` on 127.0.0.1, one per test module."""
    with start_upstream() as up:
        yield up


@pytest.fixture
def upstreams():
    """upstreams(*args) starts one more `edgerules upstream`; all are stopped after the test."""
    started = []

    def make(*args):
        up = start_upstream(*args)
        started.append(up)
        return up
    yield make
    for up in started:
        up.stop()


@pytest.fixture
def gateways(tmp_path):
    """gateways(policy_text, *serve_args, **kw) starts one more `edgerules serve --no-watch`."""
    started = []

    def make(text, *args, **kw):
        gw = start_gateway(text, tmp_path / f"gw{len(started)}", "--no-watch", *args, **kw)
        started.append(gw)
        return gw
    yield make
    for gw in started:
        gw.stop()
