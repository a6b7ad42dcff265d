"""Limits and budgets through a real gateway and upstream, on in-process memory and on a real Redis."""
from __future__ import annotations

import asyncio
import math
import shutil
import subprocess
import tempfile
import time

import httpx
import openai
import orjson
import pytest

from edgerules.gateway.limiter import async_uri, format_reset
from edgerules.lang.schema import estimate_tokens
from gw import start_gateway
from procs import Process, free_port, skip_or_fail_in_ci, start_upstream, wait_until

ALICE, BOB = "sk-alice-limits-test", "sk-bob-limits-test"
PRICE_IN, PRICE_OUT = 100.0, 200.0            # USD per 1M tokens of up/m
# A crowd body: estimated prompt 13 + max_tokens 7 = 20 tokens held; the upstream really spends 17.
CROWD_CONTENT, CROWD_MAX = "x" * 40, 7
CROWD_HOLD_TOKENS = 20
CROWD_HOLD_NANO = 13 * 100_000 + 7 * 200_000   # nano-USD at the prices above

POLICY = """
provider up {
    url "{url}"
    price m input 100 output 200
}
provider cheap { format echo }

key alice { secret "sk-alice-limits-test" }
key bob   { secret "sk-bob-limits-test" }

rule burst        { when header("x-test") == "burst"        limit requests 50 per 1m }
rule per_key      { when header("x-test") == "per-key"      limit requests 3 per 1m by key }
rule tokens       { when header("x-test") == "tokens"       limit tokens 2_000 per 1m }
rule cost         { when header("x-test") == "cost"         limit cost 0.02 per 1m }
rule crowd_tokens { when header("x-test") == "crowd-tokens" limit tokens 210 per 1m }
rule crowd_cost   { when header("x-test") == "crowd-cost"   limit cost 0.02835 per 1m }
rule overflow {
    when header("x-test") == "overflow"
    limit requests 2 per 1m else route cheap/echo
}
rule refunds      { when header("x-test") == "refunds"      limit tokens 500 per 1m }
rule unpriced {
    when header("x-test") == "unpriced"
    limit cost 0.000001 per 1m
    route cheap/echo
}
rule everything   { route up/m }
"""


# ---- processes ---------------------------------------------------------------------------------

def start_redis() -> tuple[Process, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        skip_or_fail_in_ci("redis-server is not installed, so the Redis state backend is not tested")
    import redis

    port = free_port()
    log = tempfile.TemporaryFile()
    popen = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                              "--appendonly", "no"], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    proc = Process(popen, log)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if not proc.running() or time.monotonic() > deadline:
                proc.stop()
                raise RuntimeError(f"redis-server did not start:\n{proc.output()}") from None
            time.sleep(0.05)
    client.flushall()
    client.close()
    return proc, f"redis://127.0.0.1:{port}"


@pytest.fixture(scope="module", params=["memory", "redis"])
def state_uri(request):
    if request.param == "memory":
        yield "memory://"
        return
    proc, uri = start_redis()
    yield uri
    proc.stop()


@pytest.fixture(scope="module")
def upstream():
    with start_upstream() as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream, state_uri, tmp_path_factory):
    text = POLICY.replace("{url}", upstream.url)
    gw = start_gateway(text, tmp_path_factory.mktemp("limits"), "--no-watch", "--state", state_uri)
    gw.http.headers["authorization"] = f"Bearer {ALICE}"
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def clean_upstream(upstream):
    upstream.reset()


def chat_body(content: str = "hello", **fields) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **fields}


async def crowd(gateway, test: str, n: int, body: dict) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=30.0, limits=limits,
                                 headers={"authorization": f"Bearer {ALICE}", "x-test": test}) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(n)))


def read_stream(resp: httpx.Response) -> list[dict]:
    events = [e for e in resp.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    return [orjson.loads(e[6:]) for e in events[:-1]]


def answered(gateway) -> int:
    """Requests the gateway has finished (a stream finishes, and settles its budget, after its last event)."""
    return sum(int(line.split()[-1]) for line in gateway.http.get("/metrics").text.splitlines()
               if line.startswith("edgerules_requests_total{"))


def limited(gateway, rule: str) -> int:
    for line in gateway.http.get("/metrics").text.splitlines():
        if line.startswith(f'edgerules_limited_total{{rule="{rule}"}} '):
            return int(line.split()[-1])
    return 0


# ---- request limits ----------------------------------------------------------------------------

async def test_request_limit_admits_exactly_n_of_200_concurrent(gateway, upstream):
    answers = await crowd(gateway, "burst", 200, chat_body())
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(ok) == 50 and len(refused) == 150, [(r.status_code, r.text) for r in answers
                                                   if r.status_code not in (200, 429)][:3]
    assert upstream.stats()["chat"] == 50
    assert limited(gateway, "burst") == 150

    r = refused[0]
    error = r.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "'burst'" in error["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["x-ratelimit-limit-requests"] == "50"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    # Successful answers carry the same headers; the remaining count went down as they came in.
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in ok]
    assert min(remaining) == 0 and max(remaining) < 50
    assert all(r.headers["x-ratelimit-limit-requests"] == "50" for r in ok)


def test_by_key_counts_each_key_apart(gateway):
    for secret in (ALICE, BOB):
        client = openai.OpenAI(base_url=gateway.base_url, api_key=secret, max_retries=0,
                               default_headers={"x-test": "per-key"})
        for i in range(3):
            resp = client.chat.completions.with_raw_response.create(**chat_body(f"call {i}"))
            assert resp.headers["x-ratelimit-remaining-requests"] == str(2 - i)
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(**chat_body("one too many"))
        assert "'per_key'" in info.value.message
        assert info.value.response.headers["x-ratelimit-limit-requests"] == "3"
        assert int(info.value.response.headers["retry-after"]) >= 1
        client.close()


def test_else_route_reroutes_instead_of_refusing(gateway, upstream):
    routes = []
    for _ in range(4):
        resp = gateway.post("/v1/chat/completions", json=chat_body("spill"), headers={"x-test": "overflow"})
        assert resp.status_code == 200
        routes.append(resp.headers["x-edgerules-route"])
    assert routes == ["up/m", "up/m", "cheap/echo", "cheap/echo"]
    assert upstream.stats()["chat"] == 2
    assert limited(gateway, "overflow") == 2


# ---- token and cost budgets --------------------------------------------------------------------

def upstream_usage(upstream, body: dict) -> dict:
    """What the upstream really counts for a body: ask it directly, as JSON."""
    plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    resp = httpx.post(upstream.url + "/chat/completions", json=plain, trust_env=False)
    return resp.raise_for_status().json()["usage"]


def send(gateway, test: str, body: dict) -> tuple[httpx.Response, dict | None]:
    """One request and the usage the client saw (None when it did not ask for it on a stream)."""
    before = answered(gateway)
    resp = gateway.post("/v1/chat/completions", json=body, headers={"x-test": test})
    if resp.status_code != 200:
        return resp, None
    if not body.get("stream"):
        return resp, resp.json()["usage"]
    chunks = read_stream(resp)
    usages = [c["usage"] for c in chunks if c.get("usage")]
    # The client may read the last event before the gateway settles the stream's budget: wait for
    # the gateway to count the request as finished, which it does after settling.
    wait_until(lambda: answered(gateway) > before, what="the stream to be settled")
    return resp, usages[-1] if usages else None


MODES = [("json", {}), ("stream with usage", {"stream": True, "stream_options": {"include_usage": True}}),
         ("stream", {"stream": True}), ("json again", {})]


def test_token_limit_charges_real_usage_streams_included(gateway, upstream):
    limit, spent = 2_000, 0
    for i, (mode, extra) in enumerate(MODES):
        body = chat_body(f"request {i} in mode {mode} " * (i + 2), max_tokens=60, **extra)
        hold = estimate_tokens(body) + 60
        resp, usage = send(gateway, "tokens", body)
        assert resp.status_code == 200, resp.text
        # Admission holds the estimate; everything before it was charged at its real usage.
        assert int(resp.headers["x-ratelimit-remaining-tokens"]) == limit - spent - hold, mode
        assert resp.headers["x-ratelimit-limit-tokens"] == str(limit)
        if mode == "stream":
            # The gateway asked the upstream for usage and stripped it again for this client.
            assert usage is None and '"usage"' not in resp.text
            assert upstream.stats()["last_body"]["stream_options"] == {"include_usage": True}
            usage = upstream_usage(upstream, body)
        assert usage == upstream_usage(upstream, body)
        spent += usage["prompt_tokens"] + usage["completion_tokens"]
    probe = chat_body("probe", max_tokens=5)
    resp, _ = send(gateway, "tokens", probe)
    assert int(resp.headers["x-ratelimit-remaining-tokens"]) == limit - spent - estimate_tokens(probe) - 5


def nano_cost(usage: dict) -> int:
    return math.ceil((usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT) * 1000)


def test_cost_limit_charges_real_usage_streams_included(gateway):
    budget, spent, admitted = 20_000_000, 0, 0     # $0.02 in nano-dollars
    for i in range(40):
        mode, extra = MODES[i % 3]
        body = chat_body(f"question {i} " * 3, max_tokens=20,
                         **({**extra, "stream_options": {"include_usage": True}} if extra else {}))
        hold = math.ceil((estimate_tokens(body) * PRICE_IN + 20 * PRICE_OUT) * 1000)
        resp, usage = send(gateway, "cost", body)
        if budget - spent < hold:
            assert resp.status_code == 429, f"request {i}: {budget - spent} left, {hold} needed"
            assert "'cost'" in resp.json()["error"]["message"]
            assert int(resp.headers["retry-after"]) >= 1
            break
        assert resp.status_code == 200, f"request {i}: {budget - spent} left, {hold} needed: {resp.text}"
        admitted += 1
        spent += nano_cost(usage)
    else:
        pytest.fail("the cost budget never ran out")
    assert admitted > budget // hold >= 1   # real usage is below the holds, and it was what counted


@pytest.mark.parametrize("kind", ["tokens", "cost"])
async def test_100_concurrent_requests_cannot_overspend_a_budget_with_room_for_10(gateway, upstream, kind):
    # Streams whose upstream sends one event and then stays silent until the client hangs up: every
    # admitted request holds its budget until this test closes it, however slow the machine is.
    upstream.control(chunk_delay="10m")
    body = chat_body(CROWD_CONTENT, max_tokens=CROWD_MAX, stream=True)
    assert estimate_tokens(body) + CROWD_MAX == CROWD_HOLD_TOKENS
    limits = httpx.Limits(max_connections=110, max_keepalive_connections=110)
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=60.0, limits=limits,
                                 headers={"authorization": f"Bearer {ALICE}", "x-test": f"crowd-{kind}"}
                                 ) as client:
        async def open_stream():
            return await client.send(client.build_request("POST", "/v1/chat/completions", json=body),
                                     stream=True)

        answers = await asyncio.gather(*(open_stream() for _ in range(100)), return_exceptions=True)
        try:
            assert not [a for a in answers if isinstance(a, BaseException)], answers
            statuses = [r.status_code for r in answers]
            assert statuses.count(200) == 10 and statuses.count(429) == 90, statuses
            assert upstream.stats()["chat"] == 10
        finally:
            for r in answers:
                if not isinstance(r, BaseException):
                    await r.aclose()
    usage = upstream_usage(upstream, chat_body(CROWD_CONTENT, max_tokens=CROWD_MAX))
    real = usage["prompt_tokens"] + usage["completion_tokens"] if kind == "tokens" else nano_cost(usage)
    hold = CROWD_HOLD_TOKENS if kind == "tokens" else CROWD_HOLD_NANO
    assert real < hold   # and yet the holds, not the real spend, decided who got in
    assert limited(gateway, f"crowd_{kind}") == 90


def test_failed_upstream_calls_are_refunded(gateway, upstream):
    body = chat_body("refund me", max_tokens=10)
    hold = estimate_tokens(body) + 10
    upstream.control(status=500)
    resp = gateway.post("/v1/chat/completions", json=body, headers={"x-test": "refunds"})
    assert resp.status_code == 502
    upstream.control(status=None)
    resp = gateway.post("/v1/chat/completions", json=body, headers={"x-test": "refunds"})
    assert resp.status_code == 200
    assert int(resp.headers["x-ratelimit-remaining-tokens"]) == 500 - hold


def test_a_model_without_a_price_costs_nothing(gateway):
    # cheap/echo has no price: each answer costs $0, so a one-micro-dollar budget never runs out.
    for i in range(5):
        resp = gateway.post("/v1/chat/completions", json=chat_body(f"free {i}"), headers={"x-test": "unpriced"})
        assert resp.status_code == 200 and resp.headers["x-edgerules-route"] == "cheap/echo"


def test_an_unreachable_redis_fails_closed(upstream, tmp_path):
    text = POLICY.replace("{url}", upstream.url)
    gw = start_gateway(text, tmp_path, "--no-watch", "--state", f"redis://127.0.0.1:{free_port()}")
    try:
        gw.http.headers["authorization"] = f"Bearer {ALICE}"
        resp = gw.post("/v1/chat/completions", json=chat_body(), headers={"x-test": "burst"})
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "limits_unavailable"
        resp = gw.post("/v1/chat/completions", json=chat_body())   # no limit met: no storage needed
        assert resp.status_code == 200
    finally:
        gw.stop()


# ---- small pieces ------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, text", [(0.0204, "20ms"), (1.5, "1.5s"), (59.9996, "1m0s"),
                                           (360, "6m0s"), (3723.25, "1h2m3.25s"), (86399.9996, "24h0m0s")])
def test_reset_headers_read_like_openai(seconds, text):
    assert format_reset(seconds) == text


@pytest.mark.parametrize("uri, expected", [("memory://", "async+memory://"),
                                           ("redis://10.0.0.5:6379/2", "async+redis://10.0.0.5:6379/2"),
                                           ("async+redis://h:1", "async+redis://h:1")])
def test_state_uris_get_the_async_prefix(uri, expected):
    assert async_uri(uri) == expected
    with pytest.raises(ValueError, match="needs a scheme"):
        async_uri("localhost:6379")
