"""Retries, fallbacks, timeouts, deadlines, broken streams and an outage drill, on real processes."""
from __future__ import annotations

import sys
import threading
import time

import httpx
import openai
import pytest

from procs import UpstreamProc, start_process, wait_until


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
    up.control(status=500)
    calls = []
    http = httpx.Client(event_hooks={"request": [calls.append]}, trust_env=False)
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=3, http_client=http)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.response.headers["x-edgerules-attempts"] == "3"
    assert "answered 500" in info.value.message
    assert len(calls) == 1            # the SDK did not multiply the load
    assert up.stats()["chat"] == 3


def test_non_retryable_codes_are_not_retried(upstreams, gateways):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" }}\n'
                  'rule r { retry 3 backoff constant 10ms on 429 route up/m }')
    up.control(fail_next=1, fail_status=500)
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


def test_the_deadline_ends_a_slow_attempt_with_504_and_no_retry_follows(upstreams, gateways):
    up = upstreams("--latency", "60s")
    gw = gateways(f'provider up {{ url "{up.url}" }}\n'
                  'rule r { retry 5 backoff constant 10ms timeout 60s deadline 1s route up/m }')
    resp = gw.chat("x")
    assert resp.status_code == 504
    error = resp.json()["error"]
    assert error["code"] == "deadline_exceeded" and "deadline of 1s passed after 1 attempt" in error["message"]
    # Five retries were allowed and the attempt's own timeout is 60s: only the deadline stopped it.
    assert resp.headers["x-edgerules-attempts"] == "1"
    assert up.stats()["chat"] == 1


def test_a_retry_that_cannot_start_before_the_deadline_is_not_made(upstreams, gateways):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" }}\n'
                  'rule r { retry 5 backoff constant 30s deadline 2s route up/m }')
    up.control(status=500)
    resp = gw.chat("x")
    # The first delay alone would pass the deadline, so the chain ends on the upstream's own error
    # at once instead of sleeping: one attempt, one upstream call.
    assert resp.status_code == 502 and "answered 500" in resp.json()["error"]["message"]
    assert resp.headers["x-edgerules-attempts"] == "1"
    assert up.stats()["chat"] == 1


def test_a_deadline_cuts_a_chain_of_retries_short(upstreams, gateways):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" }}\n'
                  'rule r { retry 5 backoff constant 400ms deadline 1s route up/m }')
    up.control(status=500)
    resp = gw.chat("x")
    # Attempts at about 0, 0.4 and 0.8s fit; a fourth would start after the deadline. However slow
    # the machine, never all six attempts, and SDKs are told not to add theirs.
    attempts = int(resp.headers["x-edgerules-attempts"])
    assert 1 <= attempts <= 3 and up.stats()["chat"] == attempts
    assert resp.status_code == 502 and resp.headers["x-should-retry"] == ("false" if attempts > 1 else None)


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
    # Every client loop is bounded in requests and in time, and stopped in `finally`: a failed
    # assertion must never leave threads looping behind pytest.
    give_up_at = time.monotonic() + 120

    def traffic():
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
        with httpx.Client(base_url=gw.url, trust_env=False, timeout=60) as http:
            for _ in range(5_000):
                if stop.is_set() or time.monotonic() > give_up_at:
                    return
                try:
                    r = http.post("/v1/chat/completions", json=body)
                    (routes if r.status_code == 200 else errors).append(
                        r.headers.get("x-edgerules-route") if r.status_code == 200 else r.text)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(4)]
    revived = None
    try:
        for t in threads:
            t.start()
        wait_until(lambda: routes.count("primary/m") >= 20, what="20 answers from the primary")
        primary.stop()                                   # the outage: kill the primary by its PID
        gw.wait_for_output("circuit for provider 'primary' opened")
        wait_until(lambda: routes.count("secondary/m") >= 20, what="20 answers from the secondary")
        served_during = len(routes)
        # Bring the primary back on its port; after the cooldown traffic returns to it.
        revived = start_process([sys.executable, "-m", "edgerules.drills.upstream", "--port", str(port)],
                                f"http://127.0.0.1:{port}/healthz", cls=UpstreamProc, port=port)
        wait_until(lambda: "primary/m" in routes[served_during:], timeout=60,
                   what="an answer from the revived primary")
        back = len(routes)
        wait_until(lambda: routes[back:].count("primary/m") >= 20, what="20 more answers from the primary")
        health = gw.admin_policy()["health"]["primary"]
        assert health["open"] is False and health["failures"] == 0   # the first success closed it
    finally:
        stop.set()
        for t in threads:
            t.join(70)
        if revived is not None:
            revived.stop()
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert "secondary/m" in routes[:served_during]
