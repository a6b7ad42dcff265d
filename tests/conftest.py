"""Shared fixtures: a fake upstream per test module (and a misbehaving one, tests/hostile_upstream.py),
factories of upstreams and gateways per test, and request-log stores (a SQLite file, or a database on a real PostgreSQL per module)."""
from __future__ import annotations

import time

import pytest

from gw import start_gateway
from pg import Postgres
from procs import start_hostile, start_upstream


@pytest.fixture(scope="module")
def upstream():
    """A real `edgerules upstream` on 127.0.0.1, one per test module."""
    with start_upstream() as up:
        yield up


@pytest.fixture(scope="module")
def hostile():
    """tests/hostile_upstream.py, one per test module that asks for it."""
    proc = start_hostile()
    yield proc
    proc.stop()


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


@pytest.fixture(scope="module")
def postgres():
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The --log-store URI of a fresh store of each kind."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/requests.db"
    server = request.getfixturevalue("postgres")
    name = f"t{time.monotonic_ns()}"
    import psycopg   # the postgres extra: imported only by tests that use the store

    with psycopg.connect(server.uri, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.uri.rsplit("/", 1)[0] + "/" + name
