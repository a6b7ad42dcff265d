"""The provider clients against real fake-upstream processes: answers, streams, errors, translation."""
from __future__ import annotations

import base64
import copy
import struct
import time

import orjson
import pytest

from edgerules.gateway.providers import (AnthropicProvider, EchoProvider, OpenAIProvider, ProviderError,
                                      build_provider, echo)
from edgerules.gateway.providers.anthropic import StreamTranslator, to_chat_completion, to_messages_request
from edgerules.lang.spec import ProviderSpec

from procs import free_port, start_upstream

KEY = "sk-test-Zq9x-SECRET-4417"
CHAT = {"model": "alias", "messages": [{"role": "system", "content": "be brief"},
                                       {"role": "user", "content": "hello there world"}]}


@pytest.fixture(scope="module")
def openai_up():
    with start_upstream() as proc:
        yield proc


@pytest.fixture(scope="module")
def anthropic_up():
    with start_upstream("--format", "anthropic") as proc:
        yield proc


@pytest.fixture
async def oa(openai_up):
    openai_up.reset()
    provider = build_provider(ProviderSpec("up", url=openai_up.url, api_key=KEY))
    yield provider, openai_up
    await provider.close()


@pytest.fixture
async def an(anthropic_up):
    anthropic_up.reset()
    provider = build_provider(ProviderSpec("claude", format="anthropic", url=anthropic_up.url, api_key=KEY))
    yield provider, anthropic_up
    await provider.close()


async def fails(awaitable) -> ProviderError:
    """The ProviderError an awaitable raises; no error may ever carry the provider's key."""
    with pytest.raises(ProviderError) as info:
        await awaitable
    err = info.value
    assert KEY not in err.message and KEY not in str(err) and KEY not in repr(err)
    return err


async def collect(stream) -> list[bytes]:
    """The stream's events one by one (an item may carry several: what one network read brought)."""
    events = []
    async for blob in stream:
        assert blob.endswith(b"\n\n")
        events.extend(e + b"\n\n" for e in blob.split(b"\n\n") if e)
    await stream.aclose()
    return events


def chunks(events: list[bytes]) -> list[dict]:
    assert events[-1] == b"data: [DONE]\n\n"
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") and e.count(b"\n\n") == 1 for e in events)
    return [orjson.loads(e[6:]) for e in events[:-1]]


def test_build_provider_picks_the_class_by_format():
    assert isinstance(build_provider(ProviderSpec("a")), OpenAIProvider)
    assert isinstance(build_provider(ProviderSpec("b", format="anthropic")), AnthropicProvider)
    assert isinstance(build_provider(ProviderSpec("c", format="echo")), EchoProvider)
    with pytest.raises(ValueError, match="unknown format 'grpc'"):
        build_provider(ProviderSpec("d", format="grpc"))


async def test_openai_chat_passes_the_body_with_the_target_model(oa):
    provider, up = oa
    body = copy.deepcopy(CHAT)
    resp = await provider.chat(body, "target", 5.0)
    assert body == CHAT   # the caller's body is untouched
    assert resp.status == 200
    assert resp.json() == echo.completion(CHAT, "target")
    assert resp.usage() == resp.json()["usage"]
    stats = up.stats()
    assert stats["last_body"] == {**CHAT, "model": "target"}
    assert stats["last_headers"]["authorization"] == f"Bearer {KEY}"
    await provider.chat({**CHAT, "stream": True, "stream_options": {"include_usage": True}}, "target", 5.0)
    assert up.stats()["last_body"]["stream"] is False and "stream_options" not in up.stats()["last_body"]


async def test_openai_without_key_sends_no_authorization(openai_up):
    provider = build_provider(ProviderSpec("open", url=openai_up.url))
    await provider.chat(CHAT, "m", 5.0)
    await provider.close()
    assert "authorization" not in openai_up.stats()["last_headers"]


async def test_openai_stream_passes_events_through(oa):
    provider, up = oa
    body = {**CHAT, "stream_options": {"include_usage": True}}
    stream = await provider.chat_stream(body, "target", 5.0)
    events = await collect(stream)
    await stream.aclose()   # idempotent
    assert chunks(events) == echo.stream_events(body, "target")
    assert up.stats()["last_body"]["stream"] is True and "stream" not in body


async def test_openai_embeddings_and_models(oa):
    provider, up = oa
    resp = await provider.embeddings({"model": "x", "input": ["a", "b"]}, "emb", 5.0)
    assert resp.json() == echo.embeddings({"input": ["a", "b"]}, "emb")
    assert await provider.models() == ["echo"]
    dead = build_provider(ProviderSpec("dead", url=f"http://127.0.0.1:{free_port()}/v1"))
    assert await dead.models() == []
    await dead.close()


async def test_an_early_close_releases_the_stream(oa):
    provider, up = oa
    stream = await provider.chat_stream(CHAT, "m", 5.0)
    first = await stream.__aiter__().__anext__()
    assert b'"role":"assistant"' in first
    await stream.aclose()
    unread = await provider.chat_stream(CHAT, "m", 5.0)
    await unread.aclose()   # closed before any event was read
    assert (await provider.chat(CHAT, "m", 5.0)).status == 200


@pytest.mark.parametrize("status, phrase", [(503, "service unavailable"), (429, "too many requests"),
                                            (500, "internal server error")])
async def test_error_statuses_become_provider_errors(oa, status, phrase):
    provider, up = oa
    up.control(status=status, retry_after=7)
    err = await fails(provider.chat(CHAT, "m", 5.0))
    assert (err.status, err.kind, err.upstream_status, err.provider) == (status, "status", status, "up")
    assert err.retry_after == 7.0 and err.retryable
    assert err.message == f"upstream 'up' answered {status}: injected failure: {status} {phrase}"
    assert (await fails(provider.chat_stream(CHAT, "m", 5.0))).status == status
    assert (await fails(provider.embeddings({"input": "a"}, "m", 5.0))).status == status


async def test_a_client_error_carries_the_upstream_message(oa):
    provider, _ = oa
    err = await fails(provider.chat({"messages": []}, "m", 5.0))
    assert err.status == 400 and not err.retryable and err.retry_after is None
    assert err.message == "upstream 'up' answered 400: 'messages' must be a non-empty array"


async def test_a_body_that_cannot_be_encoded_is_refused(oa):
    provider, up = oa
    err = await fails(provider.chat({**CHAT, "seed": 2 ** 70}, "m", 5.0))
    assert (err.status, err.kind) == (400, "unsupported") and up.stats()["requests"] == 0


async def test_the_key_is_redacted_from_upstream_messages(oa):
    provider, up = oa
    up.control(status=401)
    err = await fails(provider.chat(CHAT, "m", 5.0))
    assert err.status == 401 and "[redacted]" in err.message


async def test_slow_answers_time_out(oa):
    provider, up = oa
    up.control(latency="60s")
    started = time.monotonic()
    err = await fails(provider.chat(CHAT, "m", 0.1))
    assert (err.status, err.kind) == (504, "timeout") and err.retryable
    assert (await fails(provider.chat_stream(CHAT, "m", 0.1))).kind == "timeout"
    # The timeout, not the answer, ended both calls: the answer would have taken a minute.
    assert time.monotonic() - started < 30
    assert up.stats()["chat"] == 2


async def test_a_silent_stream_fails_mid_stream(oa):
    provider, up = oa
    up.control(chunk_delay="60s")   # the first event, then silence until the client goes away
    stream = await provider.chat_stream(CHAT, "m", 0.15)
    seen = []

    async def read_all():
        async for blob in stream:
            seen.extend(e for e in blob.split(b"\n\n") if e)

    err = await fails(read_all())
    assert (err.status, err.kind) == (502, "stream") and len(seen) == 1
    await stream.aclose()


async def test_a_refused_connection_is_a_connect_error():
    provider = build_provider(ProviderSpec("gone", url=f"http://127.0.0.1:{free_port()}/v1", api_key=KEY))
    for call in (provider.chat(CHAT, "m", 2.0), provider.chat_stream(CHAT, "m", 2.0),
                 provider.embeddings({"input": "a"}, "m", 2.0)):
        err = await fails(call)
        assert (err.status, err.kind, err.provider) == (502, "connect", "gone") and err.retryable
        assert err.message.startswith("cannot connect to upstream 'gone'")
    await provider.close()


@pytest.mark.parametrize("knob, text", [("drop_after", "dropped the stream"),
                                        ("error_after", "injected stream error")])
async def test_a_broken_stream_raises_after_the_events_sent(oa, knob, text):
    provider, up = oa
    up.control(**{knob: 2})
    stream = await provider.chat_stream(CHAT, "m", 5.0)
    seen = []

    async def read_all():
        async for blob in stream:
            seen.extend(e for e in blob.split(b"\n\n") if e)

    err = await fails(read_all())
    assert err.kind == "stream" and err.status == 502 and text in err.message and len(seen) == 2
    await stream.aclose()
    up.control(**{knob: None})
    assert (await provider.chat(CHAT, "m", 5.0)).status == 200   # the pool recovered


async def test_anthropic_request_translation_and_answer(an):
    provider, up = an
    body = {"model": "alias", "temperature": 0.3, "top_p": 0.9, "stop": "there", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
        {"role": "user", "content": [{"type": "text", "text": "hello there world"}]}]}
    resp = await provider.chat(body, "claude-x", 5.0)
    sent = up.stats()["last_body"]
    assert sent == {"model": "claude-x", "system": "be brief\n\nand kind", "max_tokens": 4096,
                    "stop_sequences": ["there"], "temperature": 0.3, "top_p": 0.9,
                    "messages": [{"role": "user", "content": body["messages"][2]["content"]}]}
    headers = up.stats()["last_headers"]
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers
    answer = resp.json()
    assert answer["object"] == "chat.completion" and answer["model"] == "claude-x"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello "}
    assert answer["choices"][0]["finish_reason"] == "stop"
    usage = resp.usage()
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    short = await provider.chat({**CHAT, "max_tokens": 1}, "claude-x", 5.0)
    assert short.json()["choices"][0]["finish_reason"] == "length"
    assert up.stats()["last_body"]["max_tokens"] == 1


async def test_anthropic_stream_becomes_openai_chunks(an):
    provider, up = an
    stream = await provider.chat_stream({**CHAT, "stream_options": {"include_usage": True}}, "claude-x", 5.0)
    out = chunks(await collect(stream))
    assert up.stats()["last_body"]["stream"] is True
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "claude-x" for c in out)
    assert out[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in out if c["choices"])
    assert text == "echo: hello there world"
    assert out[-2]["choices"][0]["finish_reason"] == "stop"
    assert out[-1]["choices"] == [] and out[-1]["usage"]["completion_tokens"] == echo.estimate_tokens(text)
    plain = chunks(await collect(await provider.chat_stream(CHAT, "claude-x", 5.0)))
    assert all("usage" not in c for c in plain) and plain[-1]["choices"][0]["finish_reason"] == "stop"


async def test_anthropic_errors_become_provider_errors(an):
    provider, up = an
    err = await fails(provider.chat({"messages": [{"role": "system", "content": "x"}]}, "c", 5.0))
    assert err.status == 400 and err.message == ("upstream 'claude' answered 400: "
                                                 "messages: at least one message is required")
    up.control(status=529, retry_after=3)
    err = await fails(provider.chat(CHAT, "c", 5.0))
    assert (err.status, err.retry_after, err.retryable) == (529, 3.0, True)
    assert err.message == "upstream 'claude' answered 529: injected failure: 529 overloaded"
    up.control(status=401)
    assert "[redacted]" in (await fails(provider.chat(CHAT, "c", 5.0))).message


@pytest.mark.parametrize("knob, text", [
    ("error_after", "failed mid-stream: injected stream error: overloaded"),
    ("drop_after", "dropped the stream")])
async def test_anthropic_broken_streams(an, knob, text):
    provider, up = an
    up.control(**{knob: 4})
    stream = await provider.chat_stream(CHAT, "c", 5.0)
    err = await fails(collect(stream))
    assert err.kind == "stream" and text in err.message
    await stream.aclose()


async def test_anthropic_does_not_serve_embeddings_or_tools(an):
    provider, _ = an
    err = await fails(provider.embeddings({"input": "a"}, "c", 5.0))
    assert (err.status, err.kind, err.retryable) == (400, "unsupported", False)
    assert err.message == "provider 'claude' (anthropic format) does not serve embeddings"
    err = await fails(provider.chat({**CHAT, "tools": [{"type": "function"}]}, "c", 5.0))
    assert err.kind == "unsupported" and "a function tool without a name" in err.message
    assert await provider.models() == ["echo"]


def test_anthropic_translation_details():
    body = {"max_completion_tokens": 9, "max_tokens": 3, "stop": ["a", "b"], "user": "u1", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}},
                                     {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
        {"role": "assistant", "content": None}]}
    out = to_messages_request(body, "c", stream=True)
    assert out["max_tokens"] == 9 and out["stop_sequences"] == ["a", "b"] and out["stream"] is True
    assert out["metadata"] == {"user_id": "u1"}
    assert out["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]
    assert out["messages"][1]["content"] == ""
    answer = to_chat_completion({"id": "msg_1", "content": [{"type": "text", "text": "hi"}],
                                 "stop_reason": "max_tokens",
                                 "usage": {"input_tokens": 3, "output_tokens": 2,
                                           "cache_read_input_tokens": 5}}, "c")
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10,
                               "prompt_tokens_details": {"cached_tokens": 5}}
    translator = StreamTranslator("c", include_usage=True)
    translator.feed({"type": "message_start",
                     "message": {"id": "m", "usage": {"input_tokens": 4, "output_tokens": 1}}})
    assert translator.feed({"type": "ping"}) == []
    finish = translator.feed({"type": "message_delta", "delta": {"stop_reason": "stop_sequence"},
                              "usage": {"output_tokens": 6}})
    assert b'"finish_reason":"stop"' in finish[0]
    usage_event, done = translator.feed({"type": "message_stop"})
    assert b'"prompt_tokens":4,"completion_tokens":6,"total_tokens":10' in usage_event
    assert done == b"data: [DONE]\n\n"


async def test_echo_provider_is_deterministic():
    provider = build_provider(ProviderSpec("demo", format="echo"))
    first, second = await provider.chat(CHAT, "m", 1.0), await provider.chat(copy.deepcopy(CHAT), "m", 1.0)
    assert first.body == second.body
    assert first.json()["choices"][0]["message"]["content"] == "echo: hello there world"
    usage = first.usage()
    assert usage["prompt_tokens"] >= 1 and usage["completion_tokens"] == 6   # 23 chars / 4, rounded up
    body = {**CHAT, "stream_options": {"include_usage": True}}
    out = chunks(await collect(await provider.chat_stream(body, "m", 1.0)))
    assert out[0]["choices"][0]["delta"]["role"] == "assistant" and len(out) > 3
    assert out[-2]["choices"][0]["finish_reason"] == "stop" and out[-1]["usage"] == usage
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in out[:-1]) == "echo: hello there world"
    emb = (await provider.embeddings({"input": ["a", "b", "a"]}, "e", 1.0)).json()["data"]
    assert emb[0]["embedding"] == emb[2]["embedding"] != emb[1]["embedding"] and len(emb[0]["embedding"]) == 8
    packed = (await provider.embeddings({"input": "a", "encoding_format": "base64"}, "e", 1.0)).json()
    floats = struct.unpack("<8f", base64.b64decode(packed["data"][0]["embedding"]))
    assert floats == pytest.approx(emb[0]["embedding"], abs=1e-6)
