"""Two `edgerules serve` processes sharing one real redis-server: exact limits across both, a cached
answer stored by one is a HIT on the other, a circuit opened by one is open on the other, and a Redis
outage fails closed for limits and open for the cache and breakers, with nothing lost once it is back:
a circuit one instance opened while Redis was down is pushed to the others when it answers again."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile

import pytest

from gw import start_gateway
from procs import Process, free_port, skip_or_fail_in_ci, start_upstream, wait_until
from shared_state import breaker_is_shared, cache_is_shared, chat, crowd, fresh, limit_is_exact_across, redis_gone

POLICY = """
provider up { url "{good}" }
provider flaky {
    url "{bad}"
    cooldown 10m after 2 failures
}
provider flaky2 {
    url "{bad}"
    cooldown 10m after 2 failures
}

rule exact    { when header("x-test") == "exact"    limit requests 20 per 10m }
rule durable  { when header("x-test") == "durable"  limit requests 5 per 10m }
rule cached   { when header("x-test") == "cache"    cache ttl 10m }
rule breaker  { when header("x-test") == "breaker"  route fallback [flaky/m, up/m] }
rule breaker2 { when header("x-test") == "breaker2" route fallback [flaky2/m, up/m] }
rule everything { route up/m }
"""


class Redis:
    """A redis-server that writes every change to its append-only file, so a restart keeps the data."""

    def __init__(self):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            skip_or_fail_in_ci("redis-server is not installed, so shared state is not tested")
        self.port, self.dir = free_port(), tempfile.mkdtemp(prefix="edgerules-redis-")
        self.uri = f"redis://127.0.0.1:{self.port}"
        self.proc: Process | None = None

    def start(self) -> None:
        import redis

        log = tempfile.TemporaryFile()
        popen = subprocess.Popen([self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
                                  "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.proc = Process(popen, log)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            wait_until(lambda: self._ping(client), 10, what=f"redis-server on port {self.port}")
        finally:
            client.close()

    def _ping(self, client) -> bool:
        import redis

        assert self.proc.running(), self.proc.output()
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        self.proc.popen.kill()   # SIGKILL: no chance to save anything on the way out
        self.proc.popen.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


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
    first = start_gateway(text, tmp_path_factory.mktemp("a"), "--no-watch", "--state", redis_server.uri)
    try:
        second = start_gateway(text, tmp_path_factory.mktemp("b"), "--no-watch", "--state", redis_server.uri)
    except BaseException:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


def test_one_limit_admits_exactly_n_across_both(pair):
    limit_is_exact_across(pair, 20)


def test_an_answer_cached_by_one_is_a_hit_on_the_other(pair, upstream):
    cache_is_shared(pair, upstream)


def test_identical_requests_on_both_reach_the_upstream_once(pair, upstream):
    content = fresh()
    upstream.control(latency="300ms")
    try:
        before = upstream.stats()["chat"]
        responses = asyncio.run(crowd(pair, "cache", 12, content))
    finally:
        upstream.control(latency=0)
    assert all(r.status_code == 200 for r in responses)
    caches = sorted(r.headers["x-edgerules-cache"] for r in responses)
    assert caches == ["HIT"] * 11 + ["MISS"], caches
    assert upstream.stats()["chat"] == before + 1


def test_a_circuit_opened_by_one_is_open_on_the_other(pair, bad):
    breaker_is_shared(pair, bad)


def test_a_redis_outage_fails_closed_for_limits_and_open_for_the_rest(pair, redis_server):
    first, second = pair
    for gw in (first, second, first):
        assert chat(gw, "durable").status_code == 200   # 3 of 5 used
    redis_server.kill()
    try:
        for gw in pair:
            redis_gone(gw, "durable")
    finally:
        redis_server.start()
    # Nothing was lost: the 3 admitted before the outage still count, on both gateways.
    wait_until(lambda: chat(second, "durable").status_code != 503, 30, what="limits back after Redis restarted")
    statuses = [chat(gw, "durable").status_code for gw in (first, second, first)]
    assert statuses == [200, 429, 429], statuses
    for gw in pair:   # each instance finds Redis again once its quiet second after the outage ends
        wait_until(lambda: chat(gw, "cache", fresh()).headers["x-edgerules-cache"] != "BYPASS", 30,
                   what="the cache back after Redis restarted")
    # Every pooled connection went stale with the restart: each is retried once on a new one, so a
    # burst over both instances meets no BYPASS, only the one MISS that stores the answer.
    responses = asyncio.run(crowd(pair, "cache", 16, fresh()))
    assert sorted(r.headers["x-edgerules-cache"] for r in responses) == ["HIT"] * 15 + ["MISS"]
    assert 'edgerules_provider_open{provider="flaky"} 1' in second.http.get("/metrics").text


def test_a_circuit_opened_during_an_outage_is_pushed_when_redis_is_back(pair, redis_server, bad):
    first, second = pair
    opened = 'edgerules_provider_open{provider="flaky2"} 1'
    wait_until(lambda: chat(first, "durable").status_code != 503, 30, what="Redis back for the first gateway")
    assert all(opened not in gw.http.get("/metrics").text for gw in pair)
    redis_server.kill()
    try:
        for _ in range(2):   # two failures open flaky2's circuit, in the first instance only
            resp = chat(first, "breaker2")
            assert resp.status_code == 200 and resp.headers["x-edgerules-route"] == "up/m"
        assert opened in first.http.get("/metrics").text
        assert opened not in second.http.get("/metrics").text
    finally:
        redis_server.start()
    wait_until(lambda: opened in second.http.get("/metrics").text, 30,
               what="the second gateway to see the circuit the first opened during the outage")
    assert "opened while Redis was unreachable" in first.output()
    before = bad.stats()["chat"]
    resp = chat(second, "breaker2")
    assert resp.status_code == 200 and resp.headers["x-edgerules-route"] == "up/m"
    assert resp.headers["x-edgerules-attempts"] == "1"
    assert bad.stats()["chat"] == before   # the second skipped flaky2 without calling it


def test_workers_on_memory_state_with_limits_are_refused(tmp_path):
    from procs import EDGERULES

    (tmp_path / "policy.rules").write_text('provider demo { format echo }\n'
                                           'rule capped { limit requests 5 per 1m route demo/echo }\n')
    done = subprocess.run([EDGERULES, "serve", "--rules", str(tmp_path), "--port", str(free_port()),
                           "--workers", "2", "--no-watch"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--state redis://" in done.stderr and "multiply every limit by 2" in done.stderr
