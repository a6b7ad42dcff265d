"""The fake upstream, driven over real HTTP: answers, stream events, faults, control and stats."""
from __future__ import annotations

import subprocess
import time

import httpx
import orjson
import pytest

from edgerules.drills import upstream
from edgerules.gateway.providers import echo

from procs import EDGERULES, free_port, start_process, start_upstream

CHAT = {"model": "m1", "messages": [{"role": "system", "content": "be brief"},
                                    {"role": "user", "content": "hello there world"}]}


@pytest.fixture(scope="module")
def openai_up():
    with start_upstream("--seed", "7") as proc:
        yield proc


@pytest.fixture(scope="module")
def anthropic_up():
    with start_upstream("--format", "anthropic") as proc:
        yield proc


@pytest.fixture
def up(openai_up):
    openai_up.reset()
    with httpx.Client(base_url=openai_up.url, trust_env=False, timeout=5.0) as client:
        yield openai_up, client


@pytest.fixture
def aup(anthropic_up):
    anthropic_up.reset()
    with httpx.Client(base_url=anthropic_up.url, trust_env=False, timeout=5.0) as client:
        yield anthropic_up, client


def sse(client: httpx.Client, path: str, body: dict) -> list[bytes]:
    """The data payloads of a streamed answer."""
    with client.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        return [line[6:].encode() for line in resp.iter_lines() if line.startswith("data: ")]


def test_prints_ready_line(openai_up):
    line = f"edgerules upstream listening on http://127.0.0.1:{openai_up.port} (format openai)\n"
    deadline = time.monotonic() + 2.0   # the socket may answer a moment before the line is printed
    while line not in openai_up.output() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert openai_up.output() == line
    assert httpx.get(openai_up.base + "/healthz", trust_env=False).json()["status"] == "ok"


def test_chat_answers_the_echo_completion(up):
    proc, client = up
    resp = client.post("/chat/completions", json=CHAT)
    assert resp.status_code == 200
    assert resp.json() == echo.completion(CHAT, "m1")
    assert resp.json()["choices"][0]["message"]["content"] == "echo: hello there world"
    assert client.post("/chat/completions", json=CHAT).content == resp.content   # deterministic


def test_stream_sends_the_echo_chunks_then_done(up):
    _, client = up
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    data = sse(client, "/chat/completions", body)
    assert data[-1] == b"[DONE]"
    assert [orjson.loads(d) for d in data[:-1]] == echo.stream_events(body, "m1")
    assert data[-2].startswith(b'{"id"') and orjson.loads(data[-2])["usage"]["total_tokens"] > 0


def test_embeddings_and_models(up):
    _, client = up
    resp = client.post("/embeddings", json={"model": "e1", "input": ["a", "b"]})
    assert resp.json() == echo.embeddings({"model": "e1", "input": ["a", "b"]}, "e1")
    assert [len(d["embedding"]) for d in resp.json()["data"]] == [8, 8]
    assert [m["id"] for m in client.get("/models").json()["data"]] == ["echo"]


def test_bad_requests_answer_openai_errors(up):
    _, client = up
    resp = client.post("/chat/completions", json={"model": "m1"})
    assert resp.status_code == 400 and "messages" in resp.json()["error"]["message"]
    assert client.post("/chat/completions", content=b"nope").status_code == 400
    assert client.post("/messages", json=CHAT).status_code == 404


def test_status_flag_answers_every_request():
    with start_upstream("--status", "429", "--retry-after", "2") as proc:
        resp = httpx.post(proc.url + "/chat/completions", json=CHAT, trust_env=False)
        assert resp.status_code == 429
        assert resp.headers["retry-after"] == "2"
        assert resp.json()["error"]["type"] == "rate_limit_error"
        proc.control(status=None)
        assert httpx.post(proc.url + "/chat/completions", json=CHAT, trust_env=False).status_code == 200


def test_fail_next_then_recovers_and_stats_count(up):
    proc, client = up
    proc.control(fail_next=2, fail_status=502, retry_after=1.5)
    answers = [client.post("/chat/completions", json=CHAT, headers={"X-Trace": "t1"}) for _ in range(3)]
    assert [r.status_code for r in answers] == [502, 502, 200]
    assert answers[0].headers["retry-after"] == "1.5"
    assert answers[0].json()["error"]["message"] == "injected failure: 502 bad gateway"
    stats = proc.stats()
    assert stats["requests"] == 3 and stats["chat"] == 3 and stats["embeddings"] == 0
    assert stats["by_status"] == {"200": 1, "502": 2}
    assert stats["last_headers"]["x-trace"] == "t1"
    assert stats["last_body"] == CHAT


def test_fail_rate_is_seeded(up):
    proc, client = up

    def statuses():
        proc.reset()
        proc.control(fail_rate=0.5)
        return [client.get("/models").status_code for _ in range(20)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 503}


def test_latency_delays_answers(up):
    proc, client = up
    proc.control(latency="150ms")
    started = time.monotonic()
    assert client.post("/chat/completions", json=CHAT).status_code == 200
    assert time.monotonic() - started >= 0.15


def test_drop_after_cuts_the_connection_mid_stream(up):
    proc, client = up
    proc.control(drop_after=2)
    seen = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    seen.append(line)
    assert len(seen) == 2
    assert "Traceback" not in proc.output()
    assert client.post("/chat/completions", json=CHAT).status_code == 200   # still serving


def test_error_after_sends_an_error_event(up):
    proc, client = up
    proc.control(error_after=1)
    data = sse(client, "/chat/completions", {**CHAT, "stream": True})
    assert len(data) == 2
    assert orjson.loads(data[1])["error"]["message"].startswith("injected stream error")


def test_control_validates_knobs(up):
    proc, client = up
    base = proc.base
    for knobs in ({"nope": 1}, {"fail_rate": 2}, {"latency": "soon"}, {"status": 200}, [1]):
        resp = httpx.post(base + "/_control", json=knobs, trust_env=False)
        assert resp.status_code == 400, knobs
        assert resp.json()["error"]["message"]
    assert proc.control(chunk_delay=0.01, status=503)["status"] == 503
    assert proc.control(status=None)["status"] is None


def test_reset_clears_stats_and_faults(up):
    proc, client = up
    proc.control(status=500)
    client.get("/models")
    proc.reset()
    stats = proc.stats()
    assert stats["requests"] == 0 and stats["by_status"] == {} and stats["faults"]["status"] is None
    assert client.get("/models").status_code == 200


def test_unauthorized_echoes_the_presented_key(up):
    # Deliberately leaky, like some real servers: the provider tests prove it gets redacted.
    proc, client = up
    proc.control(status=401)
    resp = client.post("/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-leak"})
    assert resp.status_code == 401 and "sk-leak" in resp.json()["error"]["message"]


def test_anthropic_message_answer(aup):
    _, client = aup
    body = {"model": "claude-x", "max_tokens": 100, "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]}
    answer = client.post("/messages", json=body).json()
    assert answer["type"] == "message" and answer["role"] == "assistant" and answer["model"] == "claude-x"
    assert answer["content"] == [{"type": "text", "text": "echo: hello there"}]
    assert answer["stop_reason"] == "end_turn" and answer["stop_sequence"] is None
    assert answer["usage"]["input_tokens"] >= 1 and answer["usage"]["output_tokens"] >= 1
    cut = client.post("/messages", json={**body, "stop_sequences": ["there"]}).json()
    assert cut["stop_reason"] == "stop_sequence" and cut["stop_sequence"] == "there"
    assert cut["content"][0]["text"] == "echo: hello "
    short = client.post("/messages", json={**body, "max_tokens": 1}).json()
    assert short["stop_reason"] == "max_tokens" and short["content"][0]["text"] == "echo"


def test_anthropic_stream_events(aup):
    _, client = aup
    body = {"model": "claude-x", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "hello there"}]}
    with client.stream("POST", "/messages", json=body) as resp:
        lines = list(resp.iter_lines())
    kinds = [line[7:] for line in lines if line.startswith("event: ")]
    events = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert kinds == [e["type"] for e in events]
    assert kinds[:3] == ["message_start", "content_block_start", "ping"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == "echo: hello there"
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_anthropic_errors_have_anthropic_shape(aup):
    proc, client = aup
    no_max_tokens = {"model": "claude-x", "messages": [{"role": "user", "content": "x"}]}
    resp = client.post("/messages", json=no_max_tokens)
    assert resp.status_code == 400
    assert resp.json()["type"] == "error" and "max_tokens" in resp.json()["error"]["message"]
    system_in_messages = {"model": "c", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}
    assert client.post("/messages", json=system_in_messages).status_code == 400
    proc.control(status=529)
    resp = client.post("/messages", json={"model": "c", "max_tokens": 5, "messages": []})
    assert resp.status_code == 529
    assert resp.json() == {"type": "error", "error": {"type": "overloaded_error",
                                                      "message": "injected failure: 529 overloaded"}}


def test_parse_duration_and_arguments():
    assert upstream.parse_duration("50ms") == pytest.approx(0.05)
    assert upstream.parse_duration("0.2s") == pytest.approx(0.2)
    assert upstream.parse_duration("1m") == 60.0
    assert upstream.parse_duration(3) == 3.0
    with pytest.raises(ValueError):
        upstream.parse_duration("-1s")
    args = upstream.build_parser().parse_args(["--latency", "20ms", "--fail-rate", "0.25",
                                                "--format", "anthropic"])
    assert (args.latency, args.fail_rate, args.format) == (0.02, 0.25, "anthropic")
    assert (args.host, args.port, args.fail_status, args.status) == ("127.0.0.1", 8081, 503, None)
    with pytest.raises(SystemExit):
        upstream.main(["--fail-rate", "2"])


def test_console_script_takes_every_documented_flag():
    port = free_port()
    argv = [EDGERULES, "upstream", "--port", str(port), "--format", "openai", "--latency", "20ms",
            "--fail-rate", "0.5", "--fail-status", "502", "--retry-after", "1s", "--drop-after", "5",
            "--error-after", "6", "--chunk-delay", "1ms", "--seed", "3"]
    with start_process(argv, f"http://127.0.0.1:{port}/healthz") as proc:
        faults = httpx.get(f"http://127.0.0.1:{port}/_stats", trust_env=False).json()["faults"]
        assert faults == {"latency": 0.02, "fail_rate": 0.5, "fail_status": 502, "status": None,
                          "retry_after": 1.0, "drop_after": 5, "error_after": 6, "chunk_delay": 0.001,
                          "fail_next": 0, "refuse_key": None, "refuse_key_status": 429}
        statuses = {httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT,
                               trust_env=False).status_code for _ in range(20)}
        assert statuses == {200, 502}
        assert "Traceback" not in proc.output()


def test_console_script_status_flag_and_help():
    port = free_port()
    with start_process([EDGERULES, "upstream", "--port", str(port), "--status", "429"],
                       f"http://127.0.0.1:{port}/healthz"):
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", trust_env=False).status_code == 429
    out = subprocess.run([EDGERULES, "upstream", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("usage: edgerules upstream")
    for flag in ("--port", "--format", "--latency", "--fail-rate", "--fail-status", "--status",
                 "--retry-after", "--drop-after", "--error-after", "--chunk-delay", "--seed"):
        assert flag in out.stdout
    bad = subprocess.run([EDGERULES, "upstream", "--fail-rate", "2"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "fail rate must be between 0 and 1" in bad.stderr
