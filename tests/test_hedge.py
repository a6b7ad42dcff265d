"""route hedge [...] after D through a real `edgerules serve` and two real upstreams: the slow
primary loses to the fast second after the delay and its connection is closed; a fast primary
wins alone; a stream is decided at its first event; the metrics and the access log show it."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess

import httpx
import pytest
from openai import OpenAI

from edgerules.lang.schema import estimate_tokens
from edgerules.observe.store import TABLE
from gw import start_gateway
from procs import EDGERULES, start_upstream, wait_until

DELAY_MS = 300


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    a, b = start_upstream(), start_upstream()
    text = (f'provider a {{\n url "{a.url}"\n price m input 2 output 8\n}}\nprovider b {{ url "{b.url}" }}\n'
            f'rule hedged {{ when model == "h" route hedge [a/m, b/m] after {DELAY_MS}ms }}\n'
            'rule p95 { when model == "p" route hedge [a/m, b/m] after p95 }\n'
            f'rule tokens {{ when model == "t" limit tokens 1_000_000 per 1h route hedge [a/m, b/m] after {DELAY_MS}ms }}\n'
            'rule nested { route fallback [hedge [a/m, b/m] after 5s, b/m] }\n')
    where = tmp_path_factory.mktemp("hedge")
    gw = start_gateway(text, where, "--no-watch", "--log-store", f"sqlite://{where}/requests.db")
    gw.store = where / "requests.db"
    yield gw, a, b
    gw.stop()
    a.stop()
    b.stop()


@pytest.fixture
def ups(setup):
    gw, a, b = setup
    a.reset()
    b.reset()
    return gw, a, b


def metric(gw, name: str) -> float:
    return sum(float(line.split()[-1]) for line in gw.http.get("/metrics").text.splitlines()
               if line.startswith(name))


def test_a_slow_primary_loses_to_the_second_and_its_connection_is_closed(ups):
    gw, a, b = ups
    a.control(latency="20s")
    won, cancelled = metric(gw, 'edgerules_hedged_total{outcome="won"}'), metric(gw, 'edgerules_hedged_total{outcome="cancelled"}')
    resp = gw.chat(model="h", content="race")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-edgerules-route"] == "b/m"
    assert resp.headers["x-edgerules-attempts"] == "2"
    assert a.stats()["chat"] == 1 and b.stats()["chat"] == 1
    # The loser's connection is closed: the slow upstream sees its client leave mid-wait.
    wait_until(lambda: a.stats()["cancelled"] == 1, 10, what="the primary's call to be cancelled")
    assert metric(gw, 'edgerules_hedged_total{outcome="won"}') == won + 1
    assert metric(gw, 'edgerules_hedged_total{outcome="cancelled"}') == cancelled + 1
    assert metric(gw, 'edgerules_upstream_calls_total{provider="a",outcome="cancelled"}') >= 1
    # The access log shows the cancelled attempt and what its prompt costs (providers bill the input).
    line = gw.wait_for_output('"hedged":[{"route":"a/m"').splitlines()
    entry = json.loads(next(text[text.index("{"):] for text in line if '"hedged"' in text))
    (hedged,) = entry["hedged"]
    assert hedged["prompt_tokens"] > 0 and hedged["cost"] == pytest.approx(hedged["prompt_tokens"] * 2 / 1e6)
    assert entry["attempts"] == 2 and entry["route"] == "b/m"
    # The stored request log's cost includes it (b has no price: the hedge's loser is all of it).
    def stored():
        with sqlite3.connect(gw.store) as db:
            return db.execute(f"SELECT attempts, cost_usd FROM {TABLE} WHERE route = 'b/m'").fetchall()
    rows = wait_until(stored, 10, what="the hedged request's row in the request log")
    assert rows == [(2, pytest.approx(hedged["cost"]))]


def test_a_token_limit_counts_the_cancelled_attempts_prompt(ups):
    gw, a, b = ups
    a.control(latency="20s")
    resp = gw.chat(model="t", content="count me twice")
    assert resp.status_code == 200 and resp.headers["x-edgerules-route"] == "b/m"
    usage = resp.json()["usage"]
    body = {"model": "t", "messages": [{"role": "user", "content": "count me twice"}]}
    # Settled: the winner's usage plus the loser's estimated prompt (it was sent, so billed).
    expected = usage["prompt_tokens"] + usage["completion_tokens"] + estimate_tokens(body)

    def used():
        rows = gw.http.get("/admin/limits").json()["data"]
        return [r["used"] for r in rows if r["rule"] == "tokens"] == [expected]
    wait_until(used, 10, what=f"the token limit to settle at {expected}")


def test_a_fast_primary_wins_without_starting_the_second(ups):
    gw, a, b = ups
    started = metric(gw, 'edgerules_hedged_total{outcome="started"}')
    for _ in range(3):
        resp = gw.chat(model="h", content="fast")
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-edgerules-route"] == "a/m"
        assert resp.headers["x-edgerules-attempts"] == "1"
    assert a.stats()["chat"] == 3 and b.stats()["chat"] == 0
    assert metric(gw, 'edgerules_hedged_total{outcome="started"}') == started


def test_a_stream_is_decided_at_its_first_event(ups):
    gw, a, b = ups
    client = OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    # The primary's first event comes at once, the rest slowly (longer than the delay in all):
    # it has already won, so the second is never asked.
    a.control(chunk_delay="80ms")
    raw = client.chat.completions.with_raw_response.create(
        model="h", messages=[{"role": "user", "content": "one two three four five six"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert raw.headers["x-edgerules-route"] == "a/m" and text
    assert b.stats()["chat"] == 0
    # A primary whose first event is late loses to the second's first event.
    a.control(chunk_delay="0ms", latency="20s")
    raw = client.chat.completions.with_raw_response.create(
        model="h", messages=[{"role": "user", "content": "hello"}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert raw.headers["x-edgerules-route"] == "b/m" and text
    wait_until(lambda: a.stats()["cancelled"] == 1, 10, what="the primary's stream to be cancelled")


def test_a_failed_primary_starts_the_second_at_once_and_a_hedge_nests(ups):
    gw, a, b = ups
    a.control(status=503)
    resp = gw.chat(model="nested", content="x")   # hedge after 5s inside a fallback: no 5 s wait
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-edgerules-route"] == "b/m"
    assert a.stats()["chat"] == 1 and b.stats()["chat"] == 1


def test_after_p95_waits_for_the_members_recent_latency(ups):
    gw, a, b = ups
    # Until 20 answers are known the delay is 1 s: these all go to a alone. (After that, by
    # definition about one in twenty is slower than the p95 and is hedged.)
    for _ in range(20):
        assert gw.chat(model="p").headers["x-edgerules-route"] == "a/m"
    assert b.stats()["chat"] == 0
    a.control(latency="20s")   # far beyond a's p95 of a few milliseconds
    resp = gw.chat(model="p")
    assert resp.headers["x-edgerules-route"] == "b/m"
    wait_until(lambda: a.stats()["cancelled"] == 1, 10, what="the primary's call to be cancelled")


def test_check_eval_and_fmt_know_hedges_and_budgets(tmp_path):
    bad = tmp_path / "bad.rules"
    bad.write_text('retry budget 150% min 5/m\nprovider a { format echo }\n'
                   'rule r { route hedge [a/x] after p100 }\n')
    out = subprocess.run([EDGERULES, "check", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    for where in (f"{bad}:1:14: error[retry-budget]", f"{bad}:1:23: error[retry-budget]",
                  f"{bad}:3:16: error[hedge-members]", f"{bad}:3:34: error[hedge-delay]"):
        assert where in out.stdout + out.stderr, out.stdout + out.stderr
    good = tmp_path / "good.rules"
    good.write_text('provider a { format echo retry budget 10% }\nprovider b { format echo }\n'
                    'rule r { route fallback [hedge [a/x, b/x] after 250ms, a/y] }\nretry budget 20% min 1/s\n')
    request = tmp_path / "req.json"
    request.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
    out = subprocess.run([EDGERULES, "eval", str(good), "--request", str(request)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["route"] == {"fallback": [{"hedge": ["a/x", "b/x"], "after": "250ms"}, "a/y"]}
    out = subprocess.run([EDGERULES, "fmt", str(good)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert good.read_text().splitlines()[-1] == "retry budget 20% min 1/s"
    assert "    retry budget 10%" in good.read_text()


def test_a_client_leaving_mid_race_cancels_every_lane(ups):
    gw, a, b = ups
    a.control(latency="20s")
    b.control(latency="20s")

    async def leave_once_both_are_asked():
        async with httpx.AsyncClient(base_url=gw.url, trust_env=False, timeout=60) as http:
            request = asyncio.ensure_future(http.post("/v1/chat/completions", json={
                "model": "h", "messages": [{"role": "user", "content": "never mind"}]}))
            for _ in range(1000):   # up to ~10 s for the second lane to start
                if b.stats()["chat"] == 1 or request.done():
                    break
                await asyncio.sleep(0.01)
            request.cancel()   # closes the connection: the gateway sees the client leave
            await asyncio.gather(request, return_exceptions=True)

    asyncio.run(leave_once_both_are_asked())
    wait_until(lambda: a.stats()["cancelled"] == 1 and b.stats()["cancelled"] == 1, 15,
               what="both upstream calls to be cancelled")
