"""Retries, fallbacks, timeouts, deadlines, broken streams and an outage drill, on real processes."""
from __future__ import annotations

import sys
import threading
import time

import httpx
import openai
import pytest

from gw import start_gateway
from procs import UpstreamProc, start_process, start_upstream


@pytest.fixture
def upstreams():
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
    started = []

    def make(text, *args, **kw):
        gw = start_gateway(text, tmp_path / f"gw{len(started)}", "--no-watch", *args, **kw)
        started.append(gw)
        return gw
    yield make
    for gw in started:
        gw.stop()


def _timed(fn):
    t0 = time.monotonic()
    result = fn()
    return result, time.monotonic() - t0


def test_retries_until_the_upstream_recovers(upstreams, gateways):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" }}\n'
                  'rule r { retry 3 backoff constant 50ms route up/m }')
    up.control(fail_next=2, fail_status=503)
    resp = gw.chat("anything")
    assert resp.status_code == 200
    assert resp.headers["x-edgerules-attempts"] == "3"
    assert up.stats()["chat"] == 3


@pytest.mark.parametrize("shape, delays", [
    ("constant", 0.2 + 0.2),
    ("linear", 0.2 + 0.4),
    ("exponential", 0.2 + 0.4),
])
def test_backoff_delays_are_waited(upstreams, gateways, shape, delays):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" }}\n'
                  f'rule r {{ retry 2 backoff {shape} 200ms max 5s route up/m }}')
    up.control(fail_next=2)
    resp, elapsed = _timed(lambda: gw.chat("x"))
    assert resp.status_code == 200 and resp.headers["x-edgerules-attempts"] == "3"
    assert elapsed >= delays


def test_retry_after_shorter_than_max_is_honoured(upstreams, gateways):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" }}\n'
                  'rule r { retry 1 backoff constant 10ms max 2s route up/m }')
    up.control(fail_next=1, fail_status=429, retry_after=0.6)
    resp, elapsed = _timed(lambda: gw.chat("x"))
    assert resp.status_code == 200 and elapsed >= 0.6


def test_exhausted_retries_answer_502_and_stop_sdk_retries(upstreams, gateways):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" }}\n'
                  'rule r { retry 2 backoff constant 10ms route up/m }')
    up.control(status=503)
    calls = []
    http = httpx.Client(event_hooks={"request": [calls.append]}, trust_env=False)
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=3, http_client=http)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.response.headers["x-edgerules-attempts"] == "3"
    assert "answered 503" in info.value.message
    assert len(calls) == 1            # the SDK did not multiply the load
    assert up.stats()["chat"] == 3


def test_non_retryable_codes_are_not_retried(upstreams, gateways):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" }}\n'
                  'rule r { retry 3 backoff constant 10ms on 429 route up/m }')
    up.control(fail_next=1, fail_status=503)
    resp = gw.chat("x")
    assert resp.status_code == 502 and resp.headers["x-edgerules-attempts"] == "1"


def test_fallback_to_the_next_member(upstreams, gateways):
    bad, good = upstreams(), upstreams()
    gw = gateways(f'provider bad {{ url "{bad.url}" }}\nprovider good {{ url "{good.url}" }}\n'
                  'rule r { route fallback [bad/m, good/m] }')
    bad.control(status=500)
    resp = gw.chat("x")
    assert resp.status_code == 200
    assert resp.headers["x-edgerules-route"] == "good/m"
    assert resp.headers["x-edgerules-attempts"] == "2"


def test_upstream_client_errors_pass_through_without_failover(upstreams, gateways):
    bad, good = upstreams(), upstreams()
    gw = gateways(f'provider bad {{ url "{bad.url}" }}\nprovider good {{ url "{good.url}" }}\n'
                  'rule r { retry 2 route fallback [bad/m, good/m] }')
    bad.control(status=400)
    resp = gw.chat("x")
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "upstream_rejected"
    assert good.stats()["chat"] == 0


def test_upstream_timeout_is_504(upstreams, gateways):
    up = upstreams("--latency", "2s")
    gw = gateways(f'provider up {{ url "{up.url}" }}\nrule r {{ timeout 300ms route up/m }}')
    resp = gw.chat("x")
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "upstream_timeout"


def test_deadline_bounds_the_whole_chain(upstreams, gateways):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" }}\n'
                  'rule r { retry 5 backoff constant 300ms deadline 700ms route up/m }')
    up.control(status=503)
    resp, elapsed = _timed(lambda: gw.chat("x"))
    assert resp.status_code in (502, 504)
    assert int(resp.headers["x-edgerules-attempts"]) < 6   # the deadline cut the retries short
    assert resp.headers["x-should-retry"] == "false"


def test_deadline_on_a_slow_upstream_is_504(upstreams, gateways):
    up = upstreams("--latency", "3s")
    gw = gateways(f'provider up {{ url "{up.url}" }}\nrule r {{ deadline 500ms route up/m }}')
    resp = gw.chat("x")
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "deadline_exceeded"


def test_stream_failure_before_the_first_byte_is_retried(upstreams, gateways):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" }}\nrule r {{ retry 1 backoff constant 10ms route up/m }}')
    up.control(fail_next=1)
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "still here"}]) if c.choices)
    assert text == "echo: still here"


@pytest.mark.parametrize("fault", ["--drop-after", "--error-after"])
def test_stream_cut_mid_answer_raises_in_the_client(upstreams, gateways, fault):
    up = upstreams(fault, "2")
    gw = gateways(f'provider up {{ url "{up.url}" }}\nrule r {{ retry 3 route up/m }}')
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": "a b c d e f g h"}])
    got = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            got.append(chunk)
    assert len(got) == 2                 # what came before the cut was delivered, nothing retried
    assert up.stats()["chat"] == 1


def test_outage_drill_zero_client_errors(upstreams, gateways):
    primary, secondary = upstreams(), upstreams()
    port = primary.port
    gw = gateways(f'provider primary {{ url "{primary.url}" cooldown 1s after 2 failures timeout 2s }}\n'
                  f'provider secondary {{ url "{secondary.url}" }}\n'
                  'rule r { retry 1 backoff constant 10ms route fallback [primary/m, secondary/m] }')
    errors, routes, stop = [], [], threading.Event()

    def traffic():
        with httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as http:
            while not stop.is_set():
                body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
                try:
                    r = http.post("/v1/chat/completions", json=body)
                    (routes if r.status_code == 200 else errors).append(
                        r.headers.get("x-edgerules-route") if r.status_code == 200 else r.text)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.7)
    primary.stop()                                   # the outage: kill the primary by its PID
    time.sleep(0.8)
    health = gw.http.get("/admin/policy").json()["health"]
    assert health["primary"]["open"] is True         # the circuit opened
    served_during = len(routes)
    # Bring the primary back on its port; after the cooldown traffic returns to it.
    revived = start_process([sys.executable, "-m", "edgerules.drills.upstream", "--port", str(port)],
                            f"http://127.0.0.1:{port}/healthz", cls=UpstreamProc, port=port)
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and routes[-1] != "primary/m":
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        revived.stop()
    assert errors == []
    assert "secondary/m" in routes and routes[-1] == "primary/m"
    assert len(routes) > served_during
