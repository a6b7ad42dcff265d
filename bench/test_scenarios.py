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
    procs = [gb._start([sys.executable, "-m", "edgerules.drills.upstream", "--port", str(up)],
                       f"http://127.0.0.1:{up}/healthz")]
    try:
        procs.append(gb._start([sys.executable, "-m", "edgerules", "serve", "--rules", policy_dir,
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
