"""Whatever body or headers a client sends, the gateway answers: a 400 in OpenAI's shape naming the
`param` for bad input (before any upstream call), never a 5xx of its own or a dropped connection."""
from __future__ import annotations

import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gw import start_gateway
from procs import start_upstream

POLICY = """
provider up { url "{url}" }
provider claude { format anthropic url "{aurl}" api_key "sk-ant-test" }
provider demo { format echo }

rule cached { when header("x-cache") == "1"  cache ttl 1m }
rule logged { when header("x-log") == "1"  log full }
rule tiered { when metadata.tier == "free"  tag "free" }
rule sonnet { when model == "sonnet"  route claude/claude-x }
rule good   { when model == "good"  route up/m }
"""
MSG = [{"role": "user", "content": "hi"}]
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def setup(upstream, tmp_path_factory):
    claude = start_upstream("--format", "anthropic")
    text = POLICY.replace("{url}", upstream.url).replace("{aurl}", claude.url)
    gw = start_gateway(text, tmp_path_factory.mktemp("bad_input"), "--no-watch", "--log-level", "info")
    yield gw, upstream, claude
    gw.stop()
    claude.stop()


def _calls(*ups) -> tuple[int, ...]:
    return tuple(up.stats()["requests"] for up in ups)


def _openai_error(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == ERROR_FIELDS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def _bad_request(resp: httpx.Response, param: str) -> dict:
    assert resp.status_code == 400, (resp.status_code, resp.text)
    err = _openai_error(resp)
    assert err["param"] == param, err
    return err


def _nested(depth: int):
    value: object = "leaf"
    for _ in range(depth - 1):
        value = [value]
    return value


# ---- the cases the hardening issue found ---------------------------------------------------------

@pytest.mark.parametrize("model", ["up/m\r\nx-injected: 1", "up/m\nx", "up/m\x00", "up/m\x7f", "demo/e\rcho",
                                   "up/" + "m" * 300])
def test_a_model_with_control_characters_or_too_long_is_400_before_any_upstream_call(setup, model):
    gw, upstream, claude = setup
    before = _calls(upstream, claude)
    for stream in (False, True):
        _bad_request(gw.chat(model, stream=stream), "model")
    assert _calls(upstream, claude) == before


def test_a_model_with_non_ascii_text_still_works(setup):
    gw, _, _ = setup
    resp = gw.chat("demo/modèle-ü")
    assert resp.status_code == 200, resp.text
    assert dict(resp.headers.raw)[b"x-edgerules-route"] == "demo/modèle-ü".encode()


@pytest.mark.parametrize("depth", [65, 256, 1000])
@pytest.mark.parametrize("headers", [{"x-cache": "1"}, {"x-log": "1"}, {"x-cache": "1", "x-log": "1"}])
def test_deeply_nested_json_is_400_under_cache_and_log_full(setup, depth, headers):
    gw, upstream, _ = setup
    before = _calls(upstream)
    for stream in (False, True):
        body = (b'{"model": "good", "messages": [{"role": "user", "content": "hi"}], "stream": %s, "extra": '
                % (b"true" if stream else b"false") + b"[" * depth + b"1" + b"]" * depth + b"}")
        resp = gw.post("/v1/chat/completions", headers={**headers, "content-type": "application/json"},
                       content=body, timeout=10.0)
        assert _bad_request(resp, "extra")["code"] == "invalid_json"
    assert _calls(upstream) == before


def test_json_nested_as_deep_as_allowed_is_served_under_cache_and_log_full(setup):
    gw, _, _ = setup
    for stream in (False, True):
        with gw.http.stream("POST", "/v1/chat/completions", headers={"x-cache": "1", "x-log": "1"},
                            json={"model": "good", "messages": MSG, "stream": stream,
                                  "extra": _nested(63)}, timeout=10.0) as resp:
            text = resp.read().decode()
        assert resp.status_code == 200, text
        if stream:
            assert text.endswith("data: [DONE]\n\n"), text[-200:]


@pytest.mark.parametrize("depth", [65, 300, 1000])
def test_deeply_nested_metadata_is_400(setup, depth):
    gw, _, _ = setup
    value = "[" * depth + "1" + "]" * depth
    resp = gw.chat("demo/echo", headers={"x-edgerules-metadata": f'{{"tier": "free", "deep": {value}}}'})
    assert _bad_request(resp, "x-edgerules-metadata")["code"] == "invalid_metadata"
    shallow = gw.chat("demo/echo", headers={"x-edgerules-metadata": '{"tier": "free", "deep": [[[1]]]}'})
    assert shallow.status_code == 200, shallow.text


@pytest.mark.parametrize("fields, param", [
    ({"stop": 5}, "stop"),
    ({"stop": ["ok", 5]}, "stop"),
    ({"stop": {"a": 1}}, "stop"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 7}]}]},
     "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": ["x"]}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": ["just a string"]}]}, "messages[0].content[0]"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_completion_tokens": 2**63}, "max_completion_tokens"),
    ({"max_completion_tokens": "10"}, "max_completion_tokens"),
    ({"n": 0}, "n"),
    ({"n": True}, "n"),
    ({"top_p": "high"}, "top_p"),
    ({"temperature": [1]}, "temperature"),
    ({"user": 5}, "user"),
    ({"stream_options": "yes"}, "stream_options"),
    ({"tools": {"type": "function"}}, "tools"),
])
@pytest.mark.parametrize("model", ["sonnet", "good", "demo/echo"])
def test_wrong_field_types_are_400_before_any_upstream_call(setup, fields, param, model):
    gw, upstream, claude = setup
    before = _calls(upstream, claude)
    body = {"model": model, "messages": MSG, **fields}
    _bad_request(gw.post("/v1/chat/completions", json=body), param)
    _bad_request(gw.post("/v1/chat/completions", json={**body, "stream": True}), param)
    assert _calls(upstream, claude) == before


def test_well_typed_fields_still_reach_an_anthropic_provider(setup):
    gw, _, claude = setup
    content = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    resp = gw.post("/v1/chat/completions", json={"model": "sonnet", "stop": ["zz"], "max_completion_tokens": 50,
                                                 "n": 1, "messages": [{"role": "user", "content": content}]})
    assert resp.status_code == 200, resp.text
    assert claude.stats()["last_body"]["stop_sequences"] == ["zz"]


@pytest.mark.parametrize("fields, param", [
    ({"dimensions": True}, "dimensions"),
    ({"dimensions": 0}, "dimensions"),
    ({"dimensions": 2**40}, "dimensions"),
    ({"dimensions": "8"}, "dimensions"),
    ({"input": [{"a": 1}]}, "input"),
    ({"input": ["a", 5]}, "input[1]"),
    ({"input": [[1, "x"]]}, "input[0]"),
    ({"encoding_format": 5}, "encoding_format"),
    ({"model": "demo/e\x00"}, "model"),
])
def test_bad_embeddings_fields_are_400(setup, fields, param):
    gw, _, _ = setup
    _bad_request(gw.post("/v1/embeddings", json={"model": "demo/echo", "input": "hello", **fields}), param)


def test_good_embeddings_dimensions_are_served(setup):
    gw, _, _ = setup
    resp = gw.post("/v1/embeddings", json={"model": "demo/echo", "input": ["a", "b"], "dimensions": 16})
    assert resp.status_code == 200, resp.text
    assert [len(d["embedding"]) for d in resp.json()["data"]] == [16, 16]


@pytest.mark.parametrize("state", ["memory", "redis"])
def test_absurd_max_completion_tokens_under_a_token_budget_is_400_not_503(upstream, tmp_path, state):
    from test_limits import start_redis

    redis_proc, uri = start_redis() if state == "redis" else (None, "memory://")
    policy = f'provider up {{ url "{upstream.url}" }}\nrule budget {{ limit tokens 1000 per 1m  route up/m }}\n'
    try:
        with start_gateway(policy, tmp_path, "--no-watch", "--state", uri) as gw:
            for value in (2**63, 2**64 - 1, 2**31):
                resp = gw.chat("any", max_completion_tokens=value)
                _bad_request(resp, "max_completion_tokens")
                _bad_request(gw.chat("any", max_tokens=value), "max_tokens")
            # The largest value allowed is judged by the budget: refused with Retry-After, not a 503.
            resp = gw.chat("any", max_completion_tokens=2**31 - 1)
            assert resp.status_code == 429, resp.text
            assert int(resp.headers["retry-after"]) >= 1
            assert gw.chat("any", max_completion_tokens=10).status_code == 200
    finally:
        if redis_proc is not None:
            redis_proc.stop()


# ---- generated bodies and headers ----------------------------------------------------------------

FIELDS = ("stop", "n", "temperature", "top_p", "max_tokens", "max_completion_tokens", "user", "stream",
          "stream_options", "tools", "functions", "logit_bias", "presence_penalty", "seed", "dimensions",
          "encoding_format", "response_format", "metadata")
MODELS = ("good", "sonnet", "demo/echo", "up/x", "claude/claude-x", "nope", "demo/", "/", "")

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.integers(-5, 5)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
deep = st.integers(1, 400).map(_nested)
anything = json_values | deep
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=16)


def mostly(good, bad, in_ten: int = 8):
    """`good` in_ten times out of ten, else `bad`: one bad field at a time is what finds crashes."""
    return st.integers(0, 9).flatmap(lambda i: good if i < in_ten else bad)


# Well-formed choices come up most of the time, so that most requests reach a provider; any
# JSON value may stand anywhere else.
models = mostly(st.sampled_from(MODELS), st.one_of(
    texts, st.tuples(st.sampled_from(("demo/", "up/", "claude/")), texts).map("".join), anything), 7)
good_parts = st.one_of(st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
                       st.fixed_dictionaries({"type": st.just("image_url"),
                                              "image_url": st.fixed_dictionaries({"url": texts})}))
parts = mostly(good_parts, st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": anything}),
    st.fixed_dictionaries({"type": st.just("image_url"),
                           "image_url": st.fixed_dictionaries({"url": anything}) | anything}),
    anything))
roles = st.sampled_from(("user", "system", "assistant", "developer"))
good_messages = st.lists(st.fixed_dictionaries({"role": roles, "content": texts | st.lists(good_parts, max_size=2)}),
                         min_size=1, max_size=3)
messages = mostly(good_messages, st.lists(st.fixed_dictionaries(
    {"role": roles | st.just("tool") | anything, "content": texts | st.lists(parts, max_size=3) | anything}),
    max_size=3) | anything)
typed = {"stop": texts | st.lists(texts, max_size=3), "n": st.integers(-1, 200),
         "max_tokens": st.integers(-1, 2**64), "max_completion_tokens": st.integers(-1, 2**64),
         "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
         "dimensions": st.integers(-1, 70_000), "temperature": st.floats(-1, 3), "top_p": st.floats(0, 1),
         "user": texts, "seed": st.integers(-2**63, 2**63), "encoding_format": st.sampled_from(("float", "base64")),
         "logit_bias": st.dictionaries(texts, st.integers(-100, 100), max_size=2)}
field_values = st.sampled_from(FIELDS).flatmap(
    lambda name: st.tuples(st.just(name), mostly(typed[name], anything) if name in typed else anything))
chat_bodies = st.builds(lambda model, msgs, extra: {"model": model, "messages": msgs, **dict(extra)},
                        models, messages, st.lists(field_values, max_size=3))
inputs = st.one_of(texts, st.lists(texts, min_size=1, max_size=3), st.lists(st.integers(-5, 2**40), max_size=3),
                   st.lists(st.lists(st.integers(0, 100), max_size=3), max_size=2), anything)
embedding_bodies = st.builds(lambda model, inp, extra: {"model": model, "input": inp, **dict(extra)},
                             models, inputs, st.lists(field_values, max_size=3))
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=24).map(lambda s: s.strip().encode("latin-1"))
headers = st.fixed_dictionaries({}, optional={
    "x-cache": st.just(b"1"), "x-log": st.just(b"1"),
    "x-edgerules-metadata": mostly(st.sampled_from((b'{"tier": "free"}', b'{"a": {"b": 1}}')), st.one_of(
        header_text, st.just(b"[1]"),
        st.integers(1, 400).map(lambda d: b'{"tier": ' + b"[" * d + b"1" + b"]" * d + b"}")), 6),
    "cache-control": st.sampled_from((b"no-cache", b"no-store", b"max-age=0")) | header_text,
    "authorization": header_text, "x-plan": header_text, "content-type": header_text,
})
requests = st.integers(0, 9).flatmap(lambda i: st.tuples(
    st.just("/v1/chat/completions"), chat_bodies, headers) if i < 7 else st.tuples(
    st.just("/v1/embeddings"), embedding_bodies, headers) if i < 9 else st.tuples(
    st.sampled_from(("/v1/chat/completions", "/v1/embeddings")), anything, headers))

EXAMPLES = 2000
TALLY = {"requests": 0, "by_status": {}, "gateway_5xx": [], "upstream_5xx": 0}


def _check_answer(path: str, body, resp: httpx.Response, text: str) -> None:
    TALLY["requests"] += 1
    TALLY["by_status"][resp.status_code] = TALLY["by_status"].get(resp.status_code, 0) + 1
    if resp.status_code >= 400:
        err = _openai_error(resp)
        if resp.status_code >= 500:
            # The upstreams here fail only when they themselves answered 5xx for what they were sent.
            if err["code"] == "upstream_error" and " answered 5" in err["message"]:
                TALLY["upstream_5xx"] += 1
            else:
                TALLY["gateway_5xx"].append((path, body, resp.status_code, text[:300]))
                raise AssertionError(f"gateway 5xx for {path} {body!r}: {text[:300]}")
    elif resp.headers.get("content-type", "").startswith("text/event-stream"):
        events = [e for e in text.split("\n\n") if e]
        assert events and (events[-1] == "data: [DONE]" or '"error"' in events[-1]), text[-300:]
    else:
        assert resp.json(), text


def test_generated_bodies_and_headers_get_no_5xx_and_every_error_in_openai_shape(setup):
    gw, _, _ = setup
    started = time.monotonic()
    client = httpx.Client(base_url=gw.url, trust_env=False, timeout=httpx.Timeout(20.0))

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests)
    def throw(request):
        path, body, hdrs = request
        with client.stream("POST", path, json=body, headers=hdrs) as resp:
            text = resp.read().decode("utf-8", "replace")
        _check_answer(path, body, resp, text)

    try:
        throw()
    finally:
        client.close()
        print(f"\nproperty run: {TALLY['requests']} requests in {time.monotonic() - started:.1f}s, "
              f"statuses {dict(sorted(TALLY['by_status'].items()))}, gateway 5xx "
              f"{len(TALLY['gateway_5xx'])}, upstream-caused 5xx {TALLY['upstream_5xx']}")
    assert TALLY["gateway_5xx"] == []
    assert TALLY["requests"] >= EXAMPLES // 2
    assert gw.running()
