"""A secret the model echoes across the events of a stream (its start in one text delta, its rest
in the next, or token by token) never reaches the client or the request log, whole or in any
10-character piece; the rest of the text arrives intact. Chat chunks, /v1/responses and
/v1/messages events, each passed through and translated, and the cached replay, against a real
gateway and the hostile upstream (tests/hostile_upstream.py, `split-key-*`)."""
from __future__ import annotations

import random
import re

import anthropic
import httpx
import openai
import orjson
import pytest

from edgerules.gateway.redact import Redactor
from edgerules.gateway.streamredact import StreamRedactor
from gw import start_gateway
from procs import wait_until
from test_secrets import GATEWAY_KEY, PROVIDER_KEY, assert_clean

POLICY = """
provider up  { url "{url}" api_key env("CANARY_PROVIDER_KEY") }
provider ant { url "{url}" format anthropic api_key env("CANARY_PROVIDER_KEY") }
key team { secret env("CANARY_GATEWAY_KEY") }
rule full   { log full }
rule cached { when header("x-test") == "cache" cache ttl 1h }
rule ant    { when header("x-via") == "anthropic" route ant }
rule pass   { route up }
"""
SPLITS = ["split-key-2", "split-key-3", "split-key-tokens"]
VIAS = ["openai", "anthropic"]   # the upstream's format: passed through for one shape, translated for the other
# What the hostile upstream says, a secret in each "[redacted]": the 1-3 characters of a secret that
# end one event go out before the next one shows whether a secret follows (README, "Operating it",
# Keys); what follows them is replaced.
SAID = re.compile(re.escape("Here is ") + "(.{0,3})" + re.escape("[redacted] and ") + "(.{0,3})"
                  + re.escape("[redacted] - the end."))


@pytest.fixture(scope="module")
def gateway(hostile, tmp_path_factory):
    gw = start_gateway(POLICY.replace("{url}", hostile.url), tmp_path_factory.mktemp("split"), "--no-watch",
                       env={"CANARY_PROVIDER_KEY": PROVIDER_KEY, "CANARY_GATEWAY_KEY": GATEWAY_KEY})
    yield gw
    gw.stop()


def assert_intact(text: str) -> None:
    said = SAID.fullmatch(text)
    assert said, f"the text is not what the upstream said, secrets replaced: {text!r}"
    assert PROVIDER_KEY.startswith(said[1]) and GATEWAY_KEY.startswith(said[2])


def raw_stream(gw, path: str, body: dict, via: str, **headers) -> tuple[str, httpx.Headers]:
    """(the bytes the client received, the response's headers) of a streamed request."""
    headers = {"authorization": f"Bearer {GATEWAY_KEY}", "x-via": via, **headers}
    with gw.http.stream("POST", path, json={**body, "stream": True}, headers=headers) as resp:
        assert resp.status_code == 200
        return resp.read().decode(), resp.headers


def openai_client(gw, via: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=GATEWAY_KEY, max_retries=0, default_headers={"x-via": via},
                         http_client=httpx.Client(trust_env=False))


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("model", SPLITS)
def test_chat_stream(gateway, model, via):
    ask = [{"role": "user", "content": GATEWAY_KEY}]
    chunks = list(openai_client(gateway, via).chat.completions.create(model=model, messages=ask, stream=True))
    assert_intact("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
    assert chunks[-1].choices[0].finish_reason == "stop"
    raw, headers = raw_stream(gateway, "/v1/chat/completions", {"model": model, "messages": ask}, via)
    assert_clean(raw, "the stream")
    assert raw.rstrip().endswith("data: [DONE]")
    row = wait_until(lambda: _row(gateway, headers["x-request-id"]), 30, what="the stream's row in the request log")
    assert_clean(orjson.dumps(row).decode(), "the request log")
    assert_intact(orjson.loads(row["answer_body"])["choices"][0]["message"]["content"])


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("model", SPLITS)
def test_responses_stream(gateway, model, via):
    events = list(openai_client(gateway, via).responses.create(model=model, input=GATEWAY_KEY, stream=True))
    assert_intact("".join(e.delta for e in events if e.type == "response.output_text.delta"))
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events if e.sequence_number is not None] in (
        [], list(range(len(events))))   # held events keep their place: no number is repeated
    raw, headers = raw_stream(gateway, "/v1/responses", {"model": model, "input": GATEWAY_KEY}, via)
    assert_clean(raw, "the stream")
    answer = assert_logged_clean(gateway, headers["x-request-id"])
    assert answer["object"] == "response" and answer["status"] == "completed"
    assert_intact("".join(part["text"] for item in answer["output"] if item["type"] == "message"
                          for part in item["content"] if part["type"] == "output_text"))


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("model", SPLITS)
def test_messages_stream(gateway, model, via):
    client = anthropic.Anthropic(base_url=gateway.url, api_key=GATEWAY_KEY, max_retries=0,
                                 default_headers={"x-via": via})
    ask = [{"role": "user", "content": GATEWAY_KEY}]
    events = list(client.messages.create(model=model, max_tokens=100, messages=ask, stream=True))
    assert_intact("".join(e.delta.text for e in events if e.type == "content_block_delta"))
    assert events[-1].type == "message_stop"
    raw, headers = raw_stream(gateway, "/v1/messages", {"model": model, "max_tokens": 100, "messages": ask}, via)
    assert_clean(raw, "the stream")
    answer = assert_logged_clean(gateway, headers["x-request-id"])
    assert (answer["type"], answer["role"], answer["stop_reason"]) == ("message", "assistant", "end_turn")
    assert_intact("".join(block["text"] for block in answer["content"] if block["type"] == "text"))


@pytest.mark.parametrize("model", SPLITS)
def test_legacy_completions_stream(gateway, model):
    chunks = list(openai_client(gateway, "openai").completions.create(model=model, prompt=GATEWAY_KEY, stream=True))
    assert_intact("".join(c.choices[0].text for c in chunks if c.choices))
    raw, headers = raw_stream(gateway, "/v1/completions", {"model": model, "prompt": GATEWAY_KEY}, "openai")
    assert_clean(raw, "the stream")
    answer = assert_logged_clean(gateway, headers["x-request-id"])
    assert answer["object"] == "text_completion"
    assert_intact(answer["choices"][0]["text"])


def test_the_cached_replay_is_redacted_too(gateway):
    body = {"model": "split-key-tokens", "messages": [{"role": "user", "content": GATEWAY_KEY}]}
    first, live = raw_stream(gateway, "/v1/chat/completions", body, "openai", **{"x-test": "cache"})
    second, replayed = raw_stream(gateway, "/v1/chat/completions", body, "openai", **{"x-test": "cache"})
    assert (live["x-edgerules-cache"], replayed["x-edgerules-cache"]) == ("MISS", "HIT")
    for raw, headers in ((first, live), (second, replayed)):
        assert_clean(raw, "the stream")
        assert_intact("".join(orjson.loads(e[6:])["choices"][0]["delta"].get("content") or ""
                              for e in raw.split("\n\n") if e.startswith("data: {")))
        answer = assert_logged_clean(gateway, headers["x-request-id"])   # the hit's row keeps its answer too
        assert_intact(answer["choices"][0]["message"]["content"])


def test_the_log_never_shows_a_secret(gateway):
    # Last in this module: every stream above has been logged by now.
    gateway.wait_for_output("edgerules.access", 2)
    assert_clean(gateway.output(), "the gateway's log")


def assert_logged_clean(gw, rid: str) -> dict:
    """The row's answer, in the API's own shape (log full), once no secret is found in the row."""
    row = wait_until(lambda: _row(gw, rid), 30, what="the stream's row in the request log")
    assert_clean(orjson.dumps(row).decode(), "the request log")
    return orjson.loads(row["answer_body"])


def _row(gw, rid: str) -> dict | None:
    resp = gw.http.get(f"/admin/requests/{rid}")
    return resp.json() if resp.status_code == 200 else None


# ---- the text pass itself, against redacting the whole text at once ----------------------------

def test_random_cuts_give_what_redacting_the_whole_text_gives():
    """Random texts of filler, whole secrets and pieces of them (one secret begins another), cut at
    random into deltas of each shape: the deltas put together are the whole text redacted at once,
    but for at most 3 characters of a secret before its "[redacted]"; no event is added or lost."""
    secrets = [PROVIDER_KEY, GATEWAY_KEY, PROVIDER_KEY[:13]]
    redactor, rng = Redactor(secrets), random.Random(7)
    for _ in range(1500):
        shape = rng.choice(list(_FRAMES))
        parts = []
        for _ in range(rng.randint(1, 6)):
            secret = rng.choice(secrets)
            start = rng.choice([0, 0, 0, rng.randint(0, len(secret))])
            end = rng.choice([len(secret), len(secret), rng.randint(start, len(secret))])
            parts += ["".join(rng.choice("ab sk-y0") for _ in range(rng.randint(0, 12))), secret[start:end]]
        text = "".join(parts) + "."
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 30))))
        bounds = [0, *cuts, len(text)]
        scrub = StreamRedactor(redactor, shape)
        frame, read = _FRAMES[shape]
        out = b"".join(scrub.feed(frame(text[a:b], k)) for k, (a, b) in enumerate(zip(bounds, bounds[1:])))
        out += scrub.feed(b"data: [DONE]\n\n") + scrub.close()
        events = [e for e in out.split(b"\n\n") if e]
        assert len(events) == len(bounds)   # the deltas and [DONE]
        got = "".join(read(orjson.loads(e.split(b"data: ", 1)[1])) for e in events[:-1])
        whole = re.split(r"(\[redacted\])", redactor.text(text))
        expected = "".join("(?:.{0,3})" + re.escape(p) if p == "[redacted]" else re.escape(p) for p in whole)
        assert re.fullmatch(expected, got), (shape, text, cuts, got)


_FRAMES = {
    "chat": (lambda p, k: b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}) + b"\n\n",
             lambda e: e["choices"][0]["delta"]["content"]),
    "responses": (lambda p, k: b"event: response.output_text.delta\ndata: " + orjson.dumps(
        {"type": "response.output_text.delta", "sequence_number": k, "output_index": 0, "delta": p}) + b"\n\n",
                  lambda e: e["delta"]),
    "messages": (lambda p, k: b"event: content_block_delta\ndata: " + orjson.dumps(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}) + b"\n\n",
                 lambda e: e["delta"]["text"]),
}


def test_interleaved_choices_and_tool_arguments_are_each_put_together_redacted():
    """Chat chunks of two choices and a tool call's arguments, interleaved at random: each is
    held apart from the others, and each put together is its text redacted whole."""
    secrets = [PROVIDER_KEY, GATEWAY_KEY, PROVIDER_KEY[:13]]
    redactor, rng = Redactor(secrets), random.Random(3)
    for _ in range(500):
        texts, queues = {}, {}
        for channel in ("content 0", "content 1", "arguments"):
            text = "".join("".join(rng.choice("ab sk-y0") for _ in range(rng.randint(0, 10))) + rng.choice(secrets)
                           for _ in range(rng.randint(1, 3))) + "."
            cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 20))))
            bounds = [0, *cuts, len(text)]
            texts[channel], queues[channel] = text, [text[a:b] for a, b in zip(bounds, bounds[1:])]
        scrub, out, count = StreamRedactor(redactor, "chat"), [], 0
        while any(queues.values()):
            channel = rng.choice([c for c in queues if queues[c]])
            piece = queues[channel].pop(0)
            delta = ({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} if channel == "arguments"
                     else {"content": piece})
            index = 1 if channel == "content 1" else 0
            out.append(scrub.feed(b"data: " + orjson.dumps({"choices": [{"index": index, "delta": delta}]}) + b"\n\n"))
            count += 1
        out.append(scrub.feed(b"data: [DONE]\n\n") + scrub.close())
        got = dict.fromkeys(texts, "")
        events = [orjson.loads(e[6:]) for e in b"".join(out).split(b"\n\n") if e.startswith(b"data: {")]
        assert len(events) == count
        for event in events:
            choice = event["choices"][0]
            if "tool_calls" in choice["delta"]:
                got["arguments"] += choice["delta"]["tool_calls"][0]["function"]["arguments"]
            else:
                got[f"content {choice['index']}"] += choice["delta"]["content"]
        for channel, text in texts.items():
            whole = re.split(r"(\[redacted\])", redactor.text(text))
            expected = "".join("(?:.{0,3})" + re.escape(p) if p == "[redacted]" else re.escape(p) for p in whole)
            assert re.fullmatch(expected, got[channel]), (channel, text, got[channel])
