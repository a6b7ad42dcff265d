"""The response cache through a real gateway and upstream, and its memory bound on ResponseCache itself."""
from __future__ import annotations

import asyncio
import os
import time
import uuid

import httpx
import openai
import orjson
import pytest
from starlette.responses import Response

from edgerules.gateway.auth import KeyRing
from edgerules.gateway.cache import ResponseCache
from edgerules.gateway.pipeline import Call
from edgerules.gateway.replay import StreamAssembler, stream_events
from edgerules.gateway.state import Gateway, Live
from edgerules.lang.policy import load_policy
from gw import start_gateway

POLICY = """
provider up { url "{url}" }

rule cached  { when header("x-test") == "cache"   cache ttl 1m }
rule tenants { when header("x-test") == "tenants" cache ttl 1m by header("x-tenant") }
rule counted {
    when header("x-test") == "counted"
    limit requests 3 per 1m
    limit tokens 1_000 per 1m
    cache ttl 1m
}
rule denied  { when header("x-deny") == "1" deny 403 "denied by the test policy" }
rule everything { route up/m }
"""


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    gw = start_gateway(POLICY.replace("{url}", upstream.url), tmp_path_factory.mktemp("cache"), "--no-watch")
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def clean_upstream(upstream):
    upstream.reset()


def body(**fields) -> dict:
    """A chat body no other test sends, so every test starts with a cold cache."""
    content = fields.pop("content", f"question {uuid.uuid4().hex[:8]}")
    return {"model": "m", "messages": [{"role": "user", "content": content}], **fields}


def post(gateway, data: dict, test: str = "cache", **headers) -> httpx.Response:
    return gateway.post("/v1/chat/completions", json=data, headers={"x-test": test, **headers})


def stream_chunks(resp: httpx.Response) -> list[dict]:
    events = [e for e in resp.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    return [orjson.loads(e[6:]) for e in events[:-1]]


def stream_text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def calls(upstream) -> int:
    return upstream.stats()["chat"]


# ---- hits and misses ---------------------------------------------------------------------------

def test_miss_then_hit_with_identical_bodies(gateway, upstream):
    client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0,
                           default_headers={"x-test": "cache"})
    request = body(temperature=0)
    first = client.chat.completions.with_raw_response.create(**request)
    second = client.chat.completions.with_raw_response.create(**request)
    assert first.headers["x-edgerules-cache"] == "MISS"
    assert second.headers["x-edgerules-cache"] == "HIT"   # another `user` would miss: see test_cache_scope.py
    assert second.headers["x-edgerules-route"] == "up/m"
    assert second.headers["x-edgerules-attempts"] == "0"
    assert second.parse().model_dump() == first.parse().model_dump()
    assert calls(upstream) == 1
    client.close()


def test_a_different_temperature_misses(gateway, upstream):
    request = body(temperature=0)
    assert post(gateway, request).headers["x-edgerules-cache"] == "MISS"
    assert post(gateway, {**request, "temperature": 0.7}).headers["x-edgerules-cache"] == "MISS"
    assert post(gateway, {**request, "temperature": 0.7}).headers["x-edgerules-cache"] == "HIT"
    assert calls(upstream) == 2


def test_cache_by_values_keep_answers_apart(gateway, upstream):
    request = body()
    assert post(gateway, request, "tenants", **{"x-tenant": "a"}).headers["x-edgerules-cache"] == "MISS"
    assert post(gateway, request, "tenants", **{"x-tenant": "b"}).headers["x-edgerules-cache"] == "MISS"
    assert post(gateway, request, "tenants", **{"x-tenant": "a"}).headers["x-edgerules-cache"] == "HIT"
    assert calls(upstream) == 2


def test_a_stream_is_stored_and_replayed_as_stream_and_as_json(gateway, upstream):
    request = body(content="tell me a short story please")
    live = post(gateway, {**request, "stream": True})
    assert live.headers["x-edgerules-cache"] == "MISS"
    live_chunks = stream_chunks(live)
    text = stream_text(live_chunks)
    assert text == "echo: tell me a short story please"
    assert all("usage" not in c for c in live_chunks)   # usage was fetched for the cache, then stripped

    replay = post(gateway, {**request, "stream": True})
    assert replay.headers["x-edgerules-cache"] == "HIT"
    assert replay.headers["content-type"].startswith("text/event-stream")
    chunks = stream_chunks(replay)
    assert stream_text(chunks) == text and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)

    with_usage = post(gateway, {**request, "stream": True, "stream_options": {"include_usage": True}})
    assert with_usage.headers["x-edgerules-cache"] == "HIT"
    usage = stream_chunks(with_usage)[-1]["usage"]

    as_json = post(gateway, request)
    assert as_json.headers["x-edgerules-cache"] == "HIT"
    answer = as_json.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == usage and usage["completion_tokens"] > 0
    assert calls(upstream) == 1

    # The official client reads the replayed stream like a live one.
    client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0,
                           default_headers={"x-test": "cache"})
    parts = client.chat.completions.create(**request, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == text
    client.close()
    assert calls(upstream) == 1


def test_a_json_answer_is_replayed_as_a_stream(gateway, upstream):
    request = body()
    answer = post(gateway, request).json()
    replay = post(gateway, {**request, "stream": True})
    assert replay.headers["x-edgerules-cache"] == "HIT"
    assert stream_text(stream_chunks(replay)) == answer["choices"][0]["message"]["content"]
    assert calls(upstream) == 1


def test_a_broken_stream_is_not_stored(gateway, upstream):
    request = {**body(content="one two three four five six"), "stream": True}
    upstream.control(error_after=2)
    broken = post(gateway, request)
    assert "upstream_stream_error" in broken.text
    upstream.control(error_after=None)
    assert post(gateway, request).headers["x-edgerules-cache"] == "MISS"
    assert post(gateway, request).headers["x-edgerules-cache"] == "HIT"
    assert calls(upstream) == 2


# ---- client directives and order ---------------------------------------------------------------

def test_no_cache_skips_the_lookup_and_no_store_skips_storing(gateway, upstream):
    stored = body()
    assert post(gateway, stored).headers["x-edgerules-cache"] == "MISS"
    fresh = post(gateway, stored, **{"cache-control": "no-cache"})
    assert fresh.headers["x-edgerules-cache"] == "BYPASS" and fresh.status_code == 200
    assert calls(upstream) == 2
    assert post(gateway, stored).headers["x-edgerules-cache"] == "HIT"

    private = body()
    assert post(gateway, private, **{"cache-control": "no-store"}).headers["x-edgerules-cache"] == "MISS"
    assert post(gateway, private, **{"cache-control": "no-store"}).headers["x-edgerules-cache"] == "MISS"
    assert post(gateway, private).headers["x-edgerules-cache"] == "MISS"
    assert post(gateway, private, **{"cache-control": "no-store"}).headers["x-edgerules-cache"] == "HIT"
    assert calls(upstream) == 2 + 3


def test_a_denied_request_is_never_answered_from_the_cache(gateway):
    request = body()
    assert post(gateway, request).headers["x-edgerules-cache"] == "MISS"
    denied = post(gateway, request, **{"x-deny": "1"})
    assert denied.status_code == 403 and denied.json()["error"]["message"] == "denied by the test policy"
    assert denied.headers["x-edgerules-cache"] == "BYPASS"


def test_limits_come_before_the_cache(gateway, upstream):
    """Hits count against request limits, but token budgets only pay for upstream calls."""
    request = body(max_tokens=50)
    answers = [post(gateway, request, "counted") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-edgerules-cache"] for a in answers[:3]] == ["MISS", "HIT", "HIT"]
    remaining = [int(a.headers["x-ratelimit-remaining-tokens"]) for a in answers[:3]]
    assert remaining[1] == remaining[2]   # the first hit's hold was handed back, nothing charged
    assert answers[3].headers["x-ratelimit-remaining-requests"] == "0"
    assert calls(upstream) == 1


# ---- single flight -----------------------------------------------------------------------------

async def crowd(gateway, n: int, data: dict) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n + 5)
    async with httpx.AsyncClient(base_url=gateway.url, trust_env=False, timeout=30, limits=limits,
                                 headers={"x-test": "cache"}) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=data) for _ in range(n)))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_20_concurrent_identical_misses_make_one_upstream_call(gateway, upstream, stream):
    upstream.control(latency="0.5s")
    answers = await crowd(gateway, 20, body(stream=stream))
    assert calls(upstream) == 1
    assert {a.status_code for a in answers} == {200}
    assert sorted(a.headers["x-edgerules-cache"] for a in answers) == ["HIT"] * 19 + ["MISS"]
    texts = {stream_text(stream_chunks(a)) if stream else a.json()["choices"][0]["message"]["content"]
             for a in answers}
    assert len(texts) == 1


async def test_when_the_leader_fails_one_follower_retries(gateway, upstream):
    upstream.control(latency="0.3s", fail_next=1, fail_status=500)
    answers = await crowd(gateway, 10, body())
    assert sorted(a.status_code for a in answers) == [200] * 9 + [502]
    assert calls(upstream) == 2   # the failed leader, then one follower for everyone else
    assert sorted(a.headers["x-edgerules-cache"] for a in answers if a.status_code == 200) == \
        ["HIT"] * 8 + ["MISS"]


# ---- the memory bound --------------------------------------------------------------------------

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_memory_stays_bounded_over_100_000_distinct_answers(tmp_path):
    (tmp_path / "p.rules").write_text('provider demo { format echo }\n'
                                      'rule all { cache ttl 1h route demo/echo }\n')
    policy = load_policy(str(tmp_path))
    gw = Gateway()
    live = Live(policy, {}, KeyRing(policy.keys))
    cache = ResponseCache("memory://", gw, max_entries=5_000, max_bytes=4 * 1024 * 1024)
    padding = "x" * 1_000   # ~1 KB answers: 100,000 of them kept would take over 100 MB

    async def pass_one(i: int) -> None:
        request = {"model": "demo/echo", "messages": [{"role": "user", "content": f"question {i}"}]}
        decision = policy.evaluate(request, {}, "", "/v1/chat/completions", "POST", "127.0.0.1", time.time())
        call = Call("chat", request, False, "", live, decision, decision.route, time.monotonic(),
                    time.monotonic() + 60)
        answer = orjson.dumps({"object": "chat.completion", "n": i, "text": padding})

        async def producer():
            return Response(answer, media_type="application/json")

        response = await cache.serve(call, producer, {})
        assert response.body == answer and call.cache == "MISS"

    for i in range(20_000):
        await pass_one(i)
    baseline = rss_bytes()
    for i in range(20_000, 100_000):
        await pass_one(i)
    grown = rss_bytes() - baseline

    assert len(cache.entries) <= 5_000
    assert cache.entries.currsize <= 4 * 1024 * 1024
    assert not cache.inflight
    assert grown < 16 * 1024 * 1024, f"the process grew by {grown / 2**20:.1f} MiB"
    # The newest answers are the ones kept.
    request = {"model": "demo/echo", "messages": [{"role": "user", "content": "question 99999"}]}
    decision = policy.evaluate(request, {}, "", "/v1/chat/completions", "POST", "127.0.0.1", time.time())
    call = Call("chat", request, False, "", live, decision, decision.route, time.monotonic(), time.monotonic() + 60)

    async def never():
        raise AssertionError("a stored answer went upstream")

    hit = await cache.serve(call, never, {})
    assert call.cache == "HIT" and orjson.loads(hit.body)["n"] == 99_999


# ---- stream assembly ---------------------------------------------------------------------------

def test_tool_calls_survive_assembly_and_replay():
    """What the echo upstream never sends: tool calls split over chunks, two choices, logprobs."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
            "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
                      "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]},
                      "finish_reason": None}]},
        {"choices": [{"index": 1, "delta": {"role": "assistant", "content": "It is"},
                      "logprobs": {"content": [{"token": "It", "logprob": -0.1}]}, "finish_reason": None}]},
        {"choices": [{"index": 1, "delta": {"content": " sunny."}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [{"index": 1, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}},
    ]
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler(b"data: " + orjson.dumps({**head, **chunk}) + b"\n\n")
    assert not assembler.complete
    assembler(b"data: [DONE]\n\n")
    assert assembler.complete
    completion = assembler.completion()
    first, second = completion["choices"]
    assert first["message"]["tool_calls"] == [{"id": "call_a", "type": "function",
                                               "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    assert first["finish_reason"] == "tool_calls"
    assert second["message"]["content"] == "It is sunny." and second["logprobs"]["content"][0]["token"] == "It"
    assert completion["usage"]["total_tokens"] == 21

    again = StreamAssembler()
    for event in stream_events(completion, with_usage=True):
        again(event)
    assert again.complete and again.completion() == completion


def test_a_stream_without_done_or_with_an_error_is_not_complete():
    head = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    cut = StreamAssembler()
    cut(b"data: " + orjson.dumps({**head, "choices": [{"index": 0, "delta": {"content": "hi"},
                                                        "finish_reason": "stop"}]}) + b"\n\n")
    assert not cut.complete
    failed = StreamAssembler()
    failed(b'data: {"error": {"message": "overloaded"}}\n\n')
    failed(b"data: [DONE]\n\n")
    assert not failed.complete
