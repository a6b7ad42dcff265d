"""The retry budget drill through a real `edgerules serve` and real failing upstreams: under a
steady bounded load against upstreams at 100% errors, `retry 5` and a fallback, the upstream
calls stay within (1 + budget) x requests + the floor, instead of 12 per request."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from gw import start_gateway
from procs import start_upstream

REQUESTS = 120
WINDOW = 10          # seconds: RETRY_BUDGET_WINDOW, the floor's multiplier


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    """Two upstreams at 100% errors behind one gateway: the gateway-wide budget for a fallback over
    both, and provider c (a's url again) with its own, tighter budget."""
    a, b = start_upstream(), start_upstream()
    gw = start_gateway('retry budget 20% min 1/s\n'
                       f'provider a {{ url "{a.url}" }}\nprovider b {{ url "{b.url}" }}\n'
                       f'provider c {{\n url "{a.url}"\n retry budget 10%\n}}\n'
                       'rule own { when model == "own" retry 5 backoff constant 1ms route c/m }\n'
                       'rule r { retry 5 backoff constant 1ms route fallback [a/m, b/m] }\n',
                       tmp_path_factory.mktemp("budget"), "--no-watch")
    a.control(status=503)
    b.control(status=503)
    yield gw, a, b
    gw.stop()
    a.stop()
    b.stop()


async def load(gw, n: int, model: str = "m", concurrency: int = 4) -> list[httpx.Response]:
    """n requests, `concurrency` at a time: a steady load bounded in count."""
    limit = asyncio.Semaphore(concurrency)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}

    async def one(http):
        async with limit:
            return await http.post("/v1/chat/completions", json=body)

    async with httpx.AsyncClient(base_url=gw.url, trust_env=False, timeout=60) as http:
        return await asyncio.gather(*(one(http) for _ in range(n)))


def exhausted(gw, budget: str) -> float:
    name = f'edgerules_retry_budget_exhausted_total{{budget="{budget}"}}'
    return sum(float(line.split()[-1]) for line in gw.http.get("/metrics").text.splitlines()
               if line.startswith(name))


def calls(*ups) -> int:
    return sum(up.stats()["chat"] for up in ups)


def test_a_gateway_wide_budget_bounds_retries_and_fallbacks(failing):
    gw, a, b = failing
    before = calls(a, b)
    answers = asyncio.run(load(gw, REQUESTS))
    assert all(r.status_code == 503 for r in answers), {r.status_code for r in answers}
    # Unbounded, every request would make 12 calls (6 to each upstream).
    made = calls(a, b) - before
    assert REQUESTS <= made <= REQUESTS * 1.2 + 1 * WINDOW, made
    refused = [r for r in answers if r.headers["x-edgerules-attempts"] == "1"]
    assert refused, "some request must have failed on its first error"
    assert all(r.headers.get("x-should-retry") == "false" for r in refused)
    assert "retry budget is spent" in refused[-1].json()["error"]["message"]
    assert exhausted(gw, "gateway") >= len(refused)
    status = gw.admin_policy()["retry_budget"]
    assert status["gateway"]["percent"] == 20 and status["gateway"]["min_per_second"] == 1
    assert status["c"]["percent"] == 10 and status["gateway"]["requests"] >= 1


def test_a_providers_own_budget_bounds_its_retries(failing):
    gw, a, b = failing
    before = calls(a)
    answers = asyncio.run(load(gw, REQUESTS, model="own"))
    assert all(r.status_code == 503 for r in answers)
    made = calls(a) - before
    assert REQUESTS <= made <= REQUESTS * 1.1, made
    assert exhausted(gw, "c") > 0
    a.control(status=None)   # healthy again: requests pass
    assert gw.chat(model="own").status_code == 200
