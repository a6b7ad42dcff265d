"""A circuit opened by one instance while Redis was down reaches the other instances once Redis is back:
the local breaker state (failure count, open circuit) is pushed when Redis answers again."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gw import start_gateway
from procs import start_upstream, wait_until
from test_multi_instance import Redis

POLICY = """
provider up { url "{good}" }
provider flaky {
    url "{bad}"
    cooldown 10m after 2 failures
}

rule breaker  { when header("x-test") == "breaker"  route fallback [flaky/m, up/m] }
rule everything { route up/m }
"""
OPEN = 'edgerules_provider_open{provider="flaky"} 1'


@pytest.fixture(scope="module")
def redis_server():
    server = Redis()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bad():
    with start_upstream() as up:
        up.control(status=503)
        yield up


@pytest.fixture(scope="module")
def pair(redis_server, upstream, bad, tmp_path_factory):
    text = POLICY.replace("{good}", upstream.url).replace("{bad}", bad.url)
    dirs = [tmp_path_factory.mktemp(name) for name in ("a", "b")]
    with ThreadPoolExecutor(2) as pool:   # both start at once: start-up is most of the module's time
        starts = [pool.submit(start_gateway, text, d, "--no-watch", "--state", redis_server.uri,
                              timeout=60) for d in dirs]
    gateways = [start.result() for start in starts if start.exception() is None]
    try:
        for start in starts:
            start.result()   # the first start-up failure, after the ones that started are listed to stop
        yield gateways
    finally:
        for gw in gateways:
            gw.stop()


def breaker(gw) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    return gw.post("/v1/chat/completions", json=body, headers={"x-test": "breaker"})


def test_a_circuit_opened_during_an_outage_is_pushed_when_redis_is_back(pair, redis_server, bad):
    first, second = pair
    assert all(OPEN not in gw.http.get("/metrics").text for gw in pair)
    redis_server.kill()
    try:
        for _ in range(2):   # two failures open flaky's circuit, in the first instance only
            resp = breaker(first)
            assert resp.status_code == 200 and resp.headers["x-edgerules-route"] == "up/m"
        assert OPEN in first.http.get("/metrics").text
        assert OPEN not in second.http.get("/metrics").text
    finally:
        redis_server.start()
    wait_until(lambda: OPEN in second.http.get("/metrics").text, 30,
               what="the second gateway to see the circuit the first opened during the outage")
    assert "opened while Redis was unreachable" in first.output()
    before = bad.stats()["chat"]
    resp = breaker(second)
    assert resp.status_code == 200 and resp.headers["x-edgerules-route"] == "up/m"
    assert resp.headers["x-edgerules-attempts"] == "1"
    assert bad.stats()["chat"] == before   # the second skipped flaky without calling it
