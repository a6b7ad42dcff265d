"""The gateway end to end with the official openai client: chat, streams, embeddings, models, headers."""
from __future__ import annotations

import openai
import pytest

from gw import start_gateway

POLICY = """
provider up { url "{url}" api_key "sk-upstream-canary" }
provider demo { format echo }

rule smart {
    when model == "smart"
    route up/fake-model
}
rule passthrough_alias {
    when model starts_with "pass-"
    route up
}
rule tagged {
    when header("x-team") == "search"
    tag "search"
}
"""


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    text = POLICY.replace("{url}", upstream.url)
    gw = start_gateway(text, tmp_path_factory.mktemp("basic"), "--no-watch")
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway):
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)


def test_openai_client_non_streaming(client, upstream):
    upstream.reset()
    resp = client.chat.completions.with_raw_response.create(
        model="smart", messages=[{"role": "user", "content": "hello world"}])
    completion = resp.parse()
    assert completion.choices[0].message.content == "echo: hello world"
    assert completion.model == "fake-model"   # the upstream saw the routed model
    assert resp.headers["x-edgerules-route"] == "up/fake-model"
    assert resp.headers["x-edgerules-attempts"] == "1"
    assert resp.headers["x-edgerules-cache"] == "BYPASS"
    assert resp.headers["x-edgerules-rules"] == "smart"
    assert len(resp.headers["x-edgerules-policy"]) == 12
    # The provider's key went upstream; the client's own Authorization did not.
    assert upstream.stats()["last_headers"]["authorization"] == "Bearer sk-upstream-canary"


def test_openai_client_streaming(client):
    stream = client.chat.completions.create(
        model="smart", stream=True, messages=[{"role": "user", "content": "one two three"}])
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "echo: one two three"


def test_stream_usage_when_asked(client):
    stream = client.chat.completions.create(
        model="smart", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count me"}])
    usages = [c.usage for c in stream if c.usage is not None]
    assert usages and usages[-1].completion_tokens > 0


def test_provider_passthrough_and_implicit_route(client):
    resp = client.chat.completions.with_raw_response.create(
        model="pass-7", messages=[{"role": "user", "content": "x"}])
    assert resp.parse().model == "pass-7"
    assert resp.headers["x-edgerules-route"] == "up/pass-7"
    resp = client.chat.completions.with_raw_response.create(
        model="demo/anything", messages=[{"role": "user", "content": "x"}])
    assert resp.headers["x-edgerules-route"] == "demo/anything"
    assert resp.headers["x-edgerules-rules"] == ""


def test_tags_and_matched_rules_header(gateway):
    resp = gateway.chat("smart", headers={"x-team": "search"})
    assert resp.status_code == 200
    # `tagged` comes after the routing rule, so it never ran.
    assert resp.headers["x-edgerules-rules"] == "smart"
    resp = gateway.chat("demo/echo", headers={"x-team": "search"})
    assert resp.headers["x-edgerules-rules"] == "tagged"


def test_embeddings(client):
    resp = client.embeddings.create(model="smart", input=["a", "b"])
    assert len(resp.data) == 2 and len(resp.data[0].embedding) > 0


def test_models_lists_what_the_policy_reaches(client):
    ids = [m.id for m in client.models.list()]
    assert "smart" in ids and "up/fake-model" in ids


def test_healthz_and_metrics(gateway):
    assert gateway.http.get("/healthz").json()["status"] == "ok"
    gateway.chat("smart")
    text = gateway.http.get("/metrics").text
    assert 'edgerules_requests_total{route="up/fake-model",status="200",cache="BYPASS"}' in text
    assert "edgerules_request_seconds_count" in text
