"""What redacting secrets across stream events costs per event (engine/gateway/streamredact.py),
beside what the gateway did before (each event's bytes searched for each secret) and nothing (a
policy without secrets): 2,000 chat chunks of 1-4 character tokens (prose, one key echoed token
by token), and the same text as /v1/responses and /v1/messages events. One StreamRedactor per
stream, as the relay makes it.

Beside it, the same through real gateways: the CPU time a gateway process spends per streamed
event, one gateway whose policy has secrets and one without, same upstream (`edgerules upstream`
streaming ~3,000 events an answer), in alternating rounds so both see the same machine.

One run here (2 cores shared with other work, load ~1.5): the pass alone 5.6-6.5 us per event
against 1.4-1.6 for the byte search it adds to; through the gateways 20.5 us of CPU per streamed
event with secrets, 17.8 without (the clock's 10 ms ticks make each round's figure +-1.1 us).

Figures: `python3 -m pytest bench/test_stream_redaction.py -s` prints microseconds per event and
the extra over the byte search; pytest-benchmark's table shows the variants side by side. Under
`--benchmark-disable` (CI) the gateway A/B runs one short round, to check that it runs.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import pytest

from edgerules.drills import gatewaybench as gb
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


# ---- through real gateways ---------------------------------------------------------------------

WITH_SECRETS = """
provider up { url "{url}" api_key env("BENCH_PROVIDER_KEY") }
key team { secret env("BENCH_GATEWAY_KEY") }
rule pass { route up/m }
"""
WITHOUT = """
provider up { url "{url}" }
rule pass { route up/m }
"""
ASK = " ".join(f"word{i % 50} is" for i in range(1500))   # the fake upstream streams it back word by word


@pytest.fixture(scope="module")
def gateways():
    up = gb._free_port()
    url = f"http://127.0.0.1:{up}/v1"
    procs = [gb.start_server([sys.executable, "-m", "edgerules", "upstream", "--port", str(up), "--chunk-delay", "0.0003"],
                       f"http://127.0.0.1:{up}/healthz")]
    env = {"BENCH_PROVIDER_KEY": SECRETS[0], "BENCH_GATEWAY_KEY": SECRETS[3]}
    out = {}
    try:
        for name, policy in (("secrets", WITH_SECRETS), ("none", WITHOUT)):
            folder = Path(tempfile.mkdtemp(prefix="edgerules-streamredact-"))
            (folder / "main.rules").write_text(policy.replace("{url}", url))
            port = gb._free_port()
            os.environ.update(env)   # the child inherits them; taken back once it has started
            try:
                procs.append(gb.start_server([sys.executable, "-m", "edgerules", "serve", "--rules", str(folder),
                                        "--port", str(port), "--no-watch", "--log-store", "none",
                                        "--log-level", "warning"], f"http://127.0.0.1:{port}/healthz"))
            finally:
                for name_ in env:
                    os.environ.pop(name_, None)
            out[name] = (f"http://127.0.0.1:{port}/v1/chat/completions", procs[-1].pid)
        yield out
    finally:
        for proc in reversed(procs):
            gb._stop(proc)


def test_gateway_cpu_per_streamed_event(gateways, request):
    quick = request.config.getoption("benchmark_disable", False)
    rounds, streams = (1, 1) if quick else (6, 3)
    figures = {name: [] for name in gateways}
    with httpx.Client(trust_env=False, timeout=120) as client:
        for k in range(rounds):
            for name in (list(gateways) if k % 2 == 0 else list(reversed(gateways))):
                url, pid = gateways[name]
                cpu, events = gb._cpu_seconds(pid), 0
                for _ in range(streams):
                    with client.stream("POST", url, json={"model": "m", "stream": True,
                                                          "messages": [{"role": "user", "content": ASK}]},
                                       headers={"authorization": f"Bearer {SECRETS[3]}"}) as resp:
                        assert resp.status_code == 200
                        events += resp.read().count(b"\n\n")
                figures[name].append((gb._cpu_seconds(pid) - cpu) / events * 1e6)
    medians = {name: round(statistics.median(v), 1) for name, v in figures.items()}
    print(f"\ngateway CPU us per streamed event, median of {rounds} rounds: {medians} "
          f"(rounds: { {n: [round(x, 1) for x in v] for n, v in figures.items()} })")
    assert events > 1000
