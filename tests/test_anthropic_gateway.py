"""The Anthropic translation through the gateway, against `edgerules upstream --format anthropic`."""
from __future__ import annotations

import openai
import pytest

from gw import start_gateway
from procs import start_upstream


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    up = start_upstream("--format", "anthropic")
    gw = start_gateway(f'provider claude {{ format anthropic url "{up.url}" api_key "sk-ant-test" }}\n'
                       'rule r { when model == "sonnet" route claude/claude-sonnet-4 }',
                       tmp_path_factory.mktemp("anthropic"), "--no-watch")
    yield up, gw
    gw.stop()
    up.stop()


def test_chat_is_translated_both_ways(setup):
    up, gw = setup
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    resp = client.chat.completions.create(
        model="sonnet", max_tokens=50,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "bonjour"}])
    assert resp.object == "chat.completion"
    assert "bonjour" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    seen = up.stats()["last_headers"]
    assert seen["x-api-key"] == "sk-ant-test" and "anthropic-version" in seen


def test_stream_is_translated(setup):
    _, gw = setup
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="sonnet", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream this please"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "stream this please" in text
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_anthropic_errors_come_back_in_openai_shape(setup):
    up, gw = setup
    up.control(fail_next=1, fail_status=529)
    resp = gw.chat("sonnet")
    assert resp.status_code == 502
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
