"""The cost of hedging when it is not needed: a `hedge [a, b] after 2s` route whose primary answers
at once, against the same request on a plain route, through one `edgerules serve` in front of
`edgerules upstream`. The hedge's extra work is a task for its lane and a timer; the second member
is never asked.

`python3 -m pytest bench/test_hedge_overhead.py` prints both timings and the ratio (from one interleaved
run, so machine load hits both alike); CI runs each once with --benchmark-disable.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import httpx
import pytest

from edgerules.drills import gatewaybench as gb

ROUNDS = 300   # interleaved pairs for the ratio
PROMPT = [{"role": "user", "content": "benchmark this request"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    a, b, gw = gb._free_port(), gb._free_port(), gb._free_port()
    rules = tmp_path_factory.mktemp("hedge-bench")
    (rules / "policy.rules").write_text(
        f'provider a {{ url "http://127.0.0.1:{a}/v1" }}\nprovider b {{ url "http://127.0.0.1:{b}/v1" }}\n'
        'rule hedged { when model == "hedged" route hedge [a/m, b/m] after 2s }\n'
        'rule plain { route a/m }\n')
    procs = [gb.start_server([sys.executable, "-m", "edgerules.drills.upstream", "--port", str(port)],
                       f"http://127.0.0.1:{port}/healthz") for port in (a, b)]
    procs.append(gb.start_server([sys.executable, "-m", "edgerules", "serve", "--rules", str(rules), "--port", str(gw),
                            "--no-watch", "--log-level", "warning"], f"http://127.0.0.1:{gw}/healthz"))
    yield f"http://127.0.0.1:{gw}/v1/chat/completions"
    for proc in reversed(procs):
        gb._stop(proc)


def _payload(model: str) -> bytes:
    return json.dumps({"model": model, "messages": PROMPT}).encode()


@pytest.mark.parametrize("model", ["plain", "hedged"])
def test_hedge_route(benchmark, gateway, model):
    benchmark.group = "hedge: primary answers before the delay"
    payload = _payload(model)
    with httpx.Client(trust_env=False) as http:
        def one():
            r = http.post(gateway, content=payload, headers={"content-type": "application/json"})
            assert r.status_code == 200 and r.headers["x-edgerules-route"] == "a/m"
            return r
        benchmark(one)


def test_hedge_overhead_ratio(benchmark, gateway):
    """Median hedged / median plain from interleaved requests (fewer rounds with --benchmark-disable)."""
    benchmark.group = "hedge: overhead ratio (one interleaved run)"
    rounds = 5 if benchmark.disabled else ROUNDS
    times = {"plain": [], "hedged": []}
    headers = {"content-type": "application/json"}
    payloads = {model: _payload(model) for model in times}

    def run():
        with httpx.Client(trust_env=False) as http:
            for _ in range(rounds):
                for model, payload in payloads.items():
                    t0 = time.perf_counter()
                    r = http.post(gateway, content=payload, headers=headers)
                    times[model].append(time.perf_counter() - t0)
                    assert r.status_code == 200 and r.headers["x-edgerules-attempts"] == "1"

    benchmark.pedantic(run, rounds=1, iterations=1)
    plain, hedged = statistics.median(times["plain"]), statistics.median(times["hedged"])
    benchmark.extra_info.update(plain_ms=round(plain * 1000, 3), hedged_ms=round(hedged * 1000, 3),
                                ratio=round(hedged / plain, 3))
    print(f"\nhedge overhead: plain {plain * 1000:.3f} ms, hedged {hedged * 1000:.3f} ms, "
          f"ratio {hedged / plain:.3f} (median of {rounds} interleaved pairs)")
