"""Phase 4: one whole request through `edgerules serve` in front of `edgerules upstream`, beside the
same request sent directly and through the bare Starlette+aiohttp pass-through.

Per-request timings from pytest-benchmark are single-connection latencies; throughput at 32
connections comes from `edgerules bench rules/ --gateway` (wrk or engine.loadgen).
"""
from __future__ import annotations

import json
import sys

import httpx
import pytest

from edgerules.drills import gatewaybench as gb

BODY = {"model": f"{gb.BENCH_PROVIDER}/bench",
        "messages": [{"role": "user", "content": "benchmark this request"}]}


@pytest.fixture(scope="module")
def servers():
    up, pt, gw = gb._free_port(), gb._free_port(), gb._free_port()
    upstream_url = f"http://127.0.0.1:{up}/v1"
    policy_dir = gb.bench_policy_dir(str(gb.Path(__file__).resolve().parent.parent / "rules"), upstream_url)
    procs = [
        gb.start_server([sys.executable, "-m", "edgerules.drills.upstream", "--port", str(up)], f"http://127.0.0.1:{up}/healthz"),
        gb.start_server([sys.executable, "-m", "edgerules.drills.passthrough", "--upstream", upstream_url, "--port", str(pt)],
                  f"http://127.0.0.1:{pt}/healthz"),
        gb.start_server([sys.executable, "-m", "edgerules", "serve", "--rules", policy_dir, "--port", str(gw),
                   "--no-watch", "--log-level", "warning"], f"http://127.0.0.1:{gw}/healthz"),
    ]
    yield {"direct": up, "passthrough": pt, "edgerules": gw}
    for proc in reversed(procs):
        gb._stop(proc)


@pytest.mark.parametrize("target", ["direct", "passthrough", "edgerules"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_whole_request(benchmark, servers, target, stream):
    benchmark.group = "4. whole request" + (" (stream)" if stream else "")
    url = f"http://127.0.0.1:{servers[target]}/v1/chat/completions"
    payload = json.dumps({**BODY, "stream": stream}).encode()
    with httpx.Client(trust_env=False) as http:
        def one():
            r = http.post(url, content=payload, headers={"content-type": "application/json"})
            assert r.status_code == 200
            return r
        resp = benchmark(one)
    if target == "edgerules":
        assert resp.headers["x-edgerules-route"] == f"{gb.BENCH_PROVIDER}/bench"
