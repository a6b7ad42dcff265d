"""What redacting secrets across stream events costs per event (engine/gateway/streamredact.py),
beside what the gateway did before (each event's bytes searched for each secret) and nothing (a
policy without secrets): 2,000 chat chunks of 1-4 character tokens (prose, one key echoed token
by token), and the same text as /v1/responses and /v1/messages events. One StreamRedactor per
stream, as the relay makes it.

Figures: `python3 -m pytest bench/test_stream_redaction.py -s` prints microseconds per event and
the extra over the byte search; pytest-benchmark's table shows the variants side by side.
"""
from __future__ import annotations

import time

import orjson
import pytest

from edgerules.gateway.redact import Redactor
from edgerules.gateway.streamredact import StreamRedactor

SECRETS = ["sk-proj-4f9a1c7e2b8d6f0a3c5e7b9d1f2a4c6e8b0d2f4a", "sk-ant-api03-7d2f9b4e1c8a6f3d0b5e2c9a7f4d1b8e",
           "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "sk-gw-team-alpha-0123456789abcdef",
           "sk-gw-team-beta-fedcba9876543210"]
PROSE = ("The answer to your question is that keys should be stored in a secrets manager, rotated "
         "often, and never pasted into prompts. Tools such as vaults and KMS services make this simple. ")
EVENTS = 2_000


def tokens(count: int) -> list[str]:
    """Prose in tokens of 1-4 characters, the key echoed once in the middle."""
    text = PROSE * (count * 3 // len(PROSE) + 1)
    middle = len(text) // 2
    text = text[:middle] + " Here is the one you sent: " + SECRETS[0] + " - revoke it. " + text[middle:]
    out, at, sizes = [], 0, (3, 1, 4, 2)
    while len(out) < count:
        size = sizes[len(out) % 4]
        out.append(text[at:at + size])
        at += size
    return out


def chat_events(pieces: list[str]) -> list[bytes]:
    return [b"data: " + orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                                      "model": "m", "choices": [{"index": 0, "delta": {"content": p},
                                                                 "logprobs": None, "finish_reason": None}]}) + b"\n\n"
            for p in pieces]


def responses_events(pieces: list[str]) -> list[bytes]:
    return [b"event: response.output_text.delta\ndata: " + orjson.dumps(
        {"type": "response.output_text.delta", "sequence_number": k, "item_id": "msg_1", "output_index": 0,
         "content_index": 0, "delta": p, "logprobs": []}) + b"\n\n" for k, p in enumerate(pieces)]


def messages_events(pieces: list[str]) -> list[bytes]:
    return [b"event: content_block_delta\ndata: " + orjson.dumps(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}) + b"\n\n"
            for p in pieces]


SHAPES = {"chat": chat_events, "responses": responses_events, "messages": messages_events}
STREAMS = {shape: make(tokens(EVENTS)) for shape, make in SHAPES.items()}
REDACTOR = Redactor(SECRETS)


def nothing(shape: str, events: list[bytes]) -> int:
    return sum(len(e) for e in events)


def bytes_only(shape: str, events: list[bytes]) -> int:
    redact = REDACTOR.bytes
    return sum(len(redact(e)) for e in events)


def across_events(shape: str, events: list[bytes]) -> int:
    scrub = StreamRedactor(REDACTOR, shape)
    return sum(len(scrub.feed(e)) for e in events) + len(scrub.close())


VARIANTS = {"nothing": nothing, "bytes_only": bytes_only, "across_events": across_events}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_stream_redaction(benchmark, variant, shape):
    benchmark.group = f"stream redaction, {shape}: {EVENTS} events"
    assert benchmark(VARIANTS[variant], shape, STREAMS[shape]) > 0


def test_per_event_cost_and_the_text_it_keeps():
    """Microseconds per event of each variant, best of 5 rounds, in one run; and the check that
    the across-events pass hides the echoed key and keeps every other character."""
    for shape, events in STREAMS.items():
        scrub = StreamRedactor(REDACTOR, shape)
        out = b"".join(scrub.feed(e) for e in events) + scrub.close()
        assert out.count(b"\n\n") == len(events)               # no event added or lost
        assert SECRETS[0][:10].encode() not in out
        figures = {}
        for name, run in VARIANTS.items():
            best = min(_timed(run, shape, events) for _ in range(5))
            figures[name] = round(best / len(events) * 1e6, 2)
        extra = round(figures["across_events"] - figures["bytes_only"], 2)
        print(f"\n{shape}: us/event {figures}; across events adds {extra} us/event over the byte search")


def _timed(run, shape, events) -> float:
    start = time.perf_counter()
    run(shape, events)
    return time.perf_counter() - start
