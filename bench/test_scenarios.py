"""Phase 4b: one request of each whole-request scenario through `edgerules serve` (the policy of
edgerules.drills.gatewaybench's scenarios: routing only, a request limit every request meets, a
token budget, a cache hit, a stream), beside the same request sent directly.

Single-connection latencies per request; the table at 1, 16 and 64 connections (throughput, added
p50/p99, CPU per request, time to first event, events/s) comes from
`edgerules bench rules/ --gateway --scenarios all` (README, Benchmarks).
"""
from __future__ import annotations

import sys

import httpx
import pytest

from edgerules.drills import gatewaybench as gb


@pytest.fixture(scope="module")
def servers():
    up, gw = gb._free_port(), gb._free_port()
    upstream_url = f"http://127.0.0.1:{up}/v1"
    policy_dir = gb.scenario_policy_dir(upstream_url)
    procs = [gb.start_server([sys.executable, "-m", "edgerules.drills.upstream", "--port", str(up)],
                       f"http://127.0.0.1:{up}/healthz")]
    try:
        procs.append(gb.start_server([sys.executable, "-m", "edgerules", "serve", "--rules", policy_dir,
                                "--port", str(gw), "--no-watch", "--log-level", "warning"],
                               f"http://127.0.0.1:{gw}/healthz"))
        yield {"direct": up, "edgerules": gw}
    finally:
        for proc in reversed(procs):
            gb._stop(proc)
        gb.shutil.rmtree(policy_dir, ignore_errors=True)


@pytest.mark.parametrize("target", ["direct", "edgerules"])
@pytest.mark.parametrize("scenario", gb.SCENARIOS)
def test_scenario_request(benchmark, servers, scenario, target):
    benchmark.group = f"4b. scenario {scenario}"
    url = f"http://127.0.0.1:{servers[target]}/v1/chat/completions"
    payload = gb.scenario_body(scenario)
    with httpx.Client(trust_env=False) as http:
        def one():
            r = http.post(url, content=payload, headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            return r
        one()   # the cache scenario's MISS
        resp = benchmark(one)
    if target == "edgerules":
        assert resp.headers["x-edgerules-route"] == f"{gb.BENCH_PROVIDER}/bench"
        if scenario == "cache":
            assert resp.headers["x-edgerules-cache"] == "HIT"
        if scenario == "limit":
            assert resp.headers["x-ratelimit-limit-requests"] == "1000000000"
        if scenario == "stream":
            assert resp.text.rstrip().endswith("data: [DONE]")


# ---- the limit path alone: one request limit's hit and window statistics -------------------------
#
# The `limit` scenario's own cost, in process: limits' asyncio MemoryStorage (a window kept
# newest-first in a list, an expiry task through asyncio.to_thread per acquire) against the
# deque-kept windows memory:// uses (edgerules.gateway.memstore), both under limits' strategy,
# on a window already holding 100,000 entries (a limit met by ~1,700 requests/s over a minute).

WINDOW_ENTRIES = 100_000


def _filled(kind: str):
    import time
    from collections import deque

    from limits.aio.storage import MemoryStorage
    from limits.aio.storage.memory import Entry

    from edgerules.gateway.limiter import Window
    from edgerules.gateway.memstore import DequeMemoryStorage

    item = Window(10**9, 60, namespace="edgerules")
    key = item.key_for("bench#0", "requests-60s", "*")
    if kind == "limits":
        storage = MemoryStorage()
        storage.events[key] = [Entry(60) for _ in range(WINDOW_ENTRIES)]
    else:
        storage = DequeMemoryStorage()
        storage.events[key] = deque([time.time()] * WINDOW_ENTRIES)
        storage._spans[key] = 60
    return storage, item


@pytest.mark.parametrize("kind", ["limits", "deque"], ids=["limits-MemoryStorage", "edgerules-memstore"])
def test_limit_hit_and_stats(benchmark, kind):
    import asyncio

    from limits.aio.strategies import MovingWindowRateLimiter

    benchmark.group = "4c. limit hit + window stats, 100,000 entries in the window"
    loop = asyncio.new_event_loop()
    try:
        storage, item = _filled(kind)
        moving = MovingWindowRateLimiter(storage)

        async def one():
            assert await moving.hit(item, "bench#0", "requests-60s", "*")
            return await moving.get_window_stats(item, "bench#0", "requests-60s", "*")

        stats = benchmark(lambda: loop.run_until_complete(one()))
        assert stats.remaining < 10**9 - WINDOW_ENTRIES
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
