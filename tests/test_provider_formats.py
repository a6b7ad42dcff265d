"""Every provider format through a real gateway to a real fake upstream of that format, with the
openai SDK: text and streamed text with usage, each format's own URL and authentication, provider
`headers {}` reaching the upstream but never an answer or a log, embeddings served or refused,
and upstream errors mapped to the gateway's."""
from __future__ import annotations

import json
import subprocess

import openai
import pytest

from gw import start_gateway
from procs import EDGERULES, start_upstream

FORMATS = ("openai", "anthropic", "azure", "gemini", "bedrock")
MODELS = {"openai": "oa/gpt-4o", "anthropic": "an/claude-sonnet-4", "azure": "az/gpt-4o",
          "gemini": "gem/gemini-2.0-flash", "bedrock": "br/amazon.nova-pro-v1:0"}
SECRETS = {"KEY": "sk-test-upstream-key-0001", "TEAM": "team-header-secret-42",
           "AWS_AK": "AKIAEDGERULESTEST000", "AWS_SK": "edgerules/test/secret/key/0000000000000"}
HEADERS = 'headers { "X-Team" env("TEAM") "OpenAI-Organization" "org-edgerules" }'


def policy(ups: dict) -> str:
    return f"""
provider oa  {{ url "{ups['openai'].url}" api_key env("KEY") {HEADERS} }}
provider an  {{ format anthropic url "{ups['anthropic'].url}" api_key env("KEY") {HEADERS} }}
provider az  {{ format azure url "{ups['azure'].base}" api_key env("KEY") api_version "2024-10-21" {HEADERS} }}
provider az2 {{ format azure url "{ups['azure'].base}" api_key env("KEY") deployment "prod-4o" }}
provider gem {{ format gemini url "{ups['gemini'].base}/v1beta" api_key env("KEY") {HEADERS} }}
provider br  {{ format bedrock url "{ups['bedrock'].base}" region "us-east-1"
                access_key env("AWS_AK") secret_key env("AWS_SK") {HEADERS} }}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    ups = {fmt: start_upstream("--format", fmt) for fmt in FORMATS}
    gateway = start_gateway(policy(ups), tmp_path_factory.mktemp("gw"), "--no-watch", env=SECRETS)
    try:
        yield gateway, ups
    finally:
        gateway.stop()
        for up in ups.values():
            up.stop()


def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_and_stream_with_usage(gw, fmt):
    gateway, _ = gw
    c = client(gateway)
    answer = c.chat.completions.create(model=MODELS[fmt], messages=[{"role": "user", "content": "hello there"}])
    assert answer.choices[0].message.content == "echo: hello there"
    assert answer.choices[0].finish_reason == "stop" and answer.usage.total_tokens > 0
    chunks = list(c.chat.completions.create(model=MODELS[fmt], messages=[{"role": "user", "content": "hello there"}],
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "echo: hello there"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].usage.total_tokens > 0 and not chunks[-1].choices


@pytest.mark.parametrize("fmt, path, auth", [
    ("openai", "/v1/chat/completions", ("authorization", "Bearer sk-test-upstream-key-0001")),
    ("anthropic", "/v1/messages", ("x-api-key", "sk-test-upstream-key-0001")),
    ("azure", "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
     ("api-key", "sk-test-upstream-key-0001")),
    ("gemini", "/v1beta/models/gemini-2.0-flash:generateContent", ("x-goog-api-key", "sk-test-upstream-key-0001")),
    ("bedrock", "/model/amazon.nova-pro-v1%3A0/converse", None),
])
def test_each_format_calls_its_own_url_with_its_own_auth_and_the_headers(gw, fmt, path, auth):
    gateway, ups = gw
    client(gateway).chat.completions.create(model=MODELS[fmt], messages=[{"role": "user", "content": "hi"}])
    stats = ups[fmt].stats()
    sent = stats["last_headers"]
    assert stats["last_path"] == path
    if auth:
        assert sent[auth[0]] == auth[1]
    if fmt != "openai":
        assert "authorization" not in sent or fmt == "bedrock"
    if fmt == "bedrock":   # signed, and the signature covers the extra headers
        assert sent["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAEDGERULESTEST000/")
        signed = sent["authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
        assert {"host", "x-amz-date", "openai-organization", "x-team"} <= set(signed)
    assert sent["x-team"] == SECRETS["TEAM"] and sent["openai-organization"] == "org-edgerules"


def test_azure_deployment_setting(gw):
    gateway, ups = gw
    client(gateway).chat.completions.create(model="az2/gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert ups["azure"].stats()["last_path"] == "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"


@pytest.mark.parametrize("fmt", FORMATS)
def test_header_values_never_reach_answers_or_logs(gw, fmt):
    gateway, ups = gw
    ups[fmt].control(status=401)   # the fake echoes the presented key in its message
    try:
        with pytest.raises(openai.APIStatusError) as err:
            client(gateway).chat.completions.create(model=MODELS[fmt], messages=[{"role": "user", "content": "hi"}])
    finally:
        ups[fmt].control(status=None)
    body = json.dumps(err.value.body)
    for secret in SECRETS.values():
        assert secret not in body
    output = gateway.output()
    for secret in SECRETS.values():
        assert secret not in output


@pytest.mark.parametrize("fmt, status, expect", [
    ("anthropic", 429, openai.RateLimitError), ("gemini", 429, openai.RateLimitError),
    ("bedrock", 429, openai.RateLimitError), ("azure", 503, openai.InternalServerError),
    ("gemini", 400, openai.BadRequestError), ("bedrock", 400, openai.BadRequestError),
])
def test_upstream_errors_are_mapped(gw, fmt, status, expect):
    gateway, ups = gw
    ups[fmt].control(status=status)
    try:
        with pytest.raises(expect) as err:
            client(gateway).chat.completions.create(model=MODELS[fmt], messages=[{"role": "user", "content": "hi"}])
    finally:
        ups[fmt].control(status=None)
    assert f"answered {status}" in err.value.message and "injected failure" in err.value.message


@pytest.mark.parametrize("fmt", ["gemini", "bedrock", "anthropic"])
def test_an_error_mid_stream_ends_the_stream_with_an_error(gw, fmt):
    gateway, ups = gw
    ups[fmt].control(error_after=2)
    try:
        with pytest.raises(openai.APIError) as err:
            list(client(gateway).chat.completions.create(
                model=MODELS[fmt], messages=[{"role": "user", "content": "a b c d e f g"}], stream=True))
    finally:
        ups[fmt].control(error_after=None)
    assert "failed mid-stream" in str(err.value) or "incomplete" in str(err.value)


@pytest.mark.parametrize("fmt", ["openai", "azure", "gemini"])
def test_embeddings(gw, fmt):
    gateway, ups = gw
    model = {"openai": "oa/text-embedding-3-small", "azure": "az/text-embedding-3-small",
             "gemini": "gem/text-embedding-004"}[fmt]
    answer = client(gateway).embeddings.create(model=model, input=["one", "two"])
    assert [d.index for d in answer.data] == [0, 1] and len(answer.data[0].embedding) == 8
    assert answer.usage.prompt_tokens > 0
    if fmt == "azure":
        assert ups["azure"].stats()["last_path"].startswith("/openai/deployments/text-embedding-3-small/embeddings?")
    if fmt == "gemini":
        assert ups["gemini"].stats()["last_path"] == "/v1beta/models/text-embedding-004:batchEmbedContents"


@pytest.mark.parametrize("fmt", ["anthropic", "bedrock"])
def test_embeddings_refused_where_a_format_has_none(gw, fmt):
    gateway, _ = gw
    with pytest.raises(openai.BadRequestError) as err:
        client(gateway).embeddings.create(model=MODELS[fmt], input="one")
    assert f"({fmt} format) does not serve embeddings" in err.value.message


def check(tmp_path, text: str) -> str:
    path = tmp_path / "p.rules"
    path.write_text(text)
    done = subprocess.run([EDGERULES, "check", str(path)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "AK": "a", "SK": "s"})
    return done.stdout + done.stderr


@pytest.mark.parametrize("text, expected", [
    ('provider b { format bedrock access_key env("AK") secret_key env("SK") }',
     "p.rules:1:10: error[missing-region]: provider 'b' (format bedrock) needs a region"),
    ('provider b { format bedrock region "us-east-1" }',
     "p.rules:1:10: error[missing-credentials]: provider 'b' (format bedrock) needs access_key and secret_key"),
    ('provider b { format bedrock region "eu" access_key env("AK") secret_key env("SK") }',
     "p.rules:1:36: error[bad-region]: 'eu' is not an AWS region"),
    ('provider a { format azure url "https://x.openai.azure.com" region "us-east-1" }',
     "p.rules:1:60: error[format-setting]: 'region' is a setting of format bedrock, not azure"),
    ('provider a { format azure }', "p.rules:1:10: error[missing-url]: provider 'a' needs a url"),
    ('provider a { format gemini headers { "x y" "1" } }',
     "p.rules:1:38: error[bad-header]: 'x y' is not a valid header name"),
    ('provider a { format gemini headers { "Host" "h" } }',
     "p.rules:1:38: error[bad-header]: the gateway sets 'Host' itself"),
    ('provider a { format gemini headers { "x-a" "1" "X-A" "2" } }',
     "p.rules:1:48: error[duplicate-setting]: header 'X-A' is already set at"),
])
def test_provider_settings_are_checked(tmp_path, text, expected):
    out = check(tmp_path, text + '\nrule r { route a }\n'.replace("route a", "route " + text.split()[1]))
    assert expected in out, out


PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="


@pytest.mark.parametrize("fmt, expected", [
    ("anthropic", {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}}),
    ("gemini", {"inlineData": {"mimeType": "image/png", "data": PIXEL}}),
    ("bedrock", {"image": {"format": "png", "source": {"bytes": PIXEL}}}),
])
def test_images_are_translated(gw, fmt, expected):
    gateway, ups = gw
    content = [{"type": "text", "text": "what is this"},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]
    answer = client(gateway).chat.completions.create(model=MODELS[fmt], messages=[{"role": "user", "content": content}])
    assert answer.choices[0].message.content == "echo: what is this"
    sent = ups[fmt].stats()["last_body"]
    parts = sent["contents"][0]["parts"] if fmt == "gemini" else sent["messages"][0]["content"]
    assert parts[1] == expected


@pytest.mark.parametrize("fmt", ["gemini", "bedrock"])
def test_an_image_url_the_format_cannot_fetch_is_refused(gw, fmt):
    gateway, _ = gw
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as err:
        client(gateway).chat.completions.create(model=MODELS[fmt], messages=[{"role": "user", "content": content}])
    assert f"({fmt} format) does not translate" in err.value.message and "data: URL" in err.value.message


def test_gemini_n_is_candidate_count(gw):
    gateway, ups = gw
    answer = client(gateway).chat.completions.create(model=MODELS["gemini"], n=2, seed=3,
                                                     messages=[{"role": "user", "content": "hi"}])
    assert [c.index for c in answer.choices] == [0, 1]
    assert {c.message.content for c in answer.choices} == {"echo: hi"}
    config = ups["gemini"].stats()["last_body"]["generationConfig"]
    assert config["candidateCount"] == 2 and config["seed"] == 3
