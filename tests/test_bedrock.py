"""Bedrock through a real gateway to the fake Bedrock, which recomputes every SigV4 signature with
botocore: the right credentials answer, a wrong secret, key or region is AWS's 403, a body changed
after signing is refused, and the ConverseStream event-stream framing is decoded end to end."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from gw import start_gateway
from procs import start_upstream

ENV = {"AWS_AK": "AKIAEDGERULESTEST000", "AWS_SK": "edgerules/test/secret/key/0000000000000",
       "BAD_SK": "edgerules/not/the/secret/key/00000000000", "BAD_AK": "AKIANOTTHEKEY0000000"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    up = start_upstream("--format", "bedrock")
    text = f"""
provider br    {{ format bedrock url "{up.base}" region "us-east-1" access_key env("AWS_AK") secret_key env("AWS_SK") }}
provider wrong {{ format bedrock url "{up.base}" region "us-east-1" access_key env("AWS_AK") secret_key env("BAD_SK") }}
provider who   {{ format bedrock url "{up.base}" region "us-east-1" access_key env("BAD_AK") secret_key env("AWS_SK") }}
provider west  {{ format bedrock url "{up.base}" region "us-west-2" access_key env("AWS_AK") secret_key env("AWS_SK") }}
"""
    gateway = start_gateway(text, tmp_path_factory.mktemp("gw"), "--no-watch", env=ENV)
    try:
        yield gateway, up
    finally:
        gateway.stop()
        up.stop()


def chat(gateway, model: str, **kw):
    c = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}], **kw)


def test_signed_requests_are_accepted(gw):
    gateway, up = gw
    before = up.stats()["by_status"].get("200", 0)
    assert chat(gateway, "br/anthropic.claude-3-haiku-20240307-v1:0").choices[0].message.content == "echo: hello"
    stream = chat(gateway, "br/meta.llama3-70b-instruct-v1:0", stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == "echo: hello"
    assert up.stats()["by_status"]["200"] == before + 2


@pytest.mark.parametrize("provider, text", [
    ("wrong", "The request signature we calculated does not match"),
    ("who", "The security token included in the request is invalid"),
    ("west", "Credential should be scoped to a valid region"),
])
def test_a_bad_signature_is_awss_403(gw, provider, text):
    gateway, up = gw
    with pytest.raises(openai.APIStatusError) as err:
        chat(gateway, f"{provider}/amazon.nova-pro-v1:0")
    assert "answered 403" in err.value.message and text in err.value.message
    assert ENV["BAD_SK"] not in err.value.message and ENV["AWS_SK"] not in gateway.output()


def test_the_fake_refuses_a_body_changed_after_signing(gw):
    """The check is real: a request signed by botocore passes, the same headers on another body do not."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    _, up = gw
    url = f"{up.base}/model/amazon.nova-pro-v1%3A0/converse"
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
    request = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(ENV["AWS_AK"], ENV["AWS_SK"]), "bedrock", "us-east-1").add_auth(request)
    headers = dict(request.headers.items())
    with httpx.Client(trust_env=False) as http:
        ok = http.post(httpx.URL(url), content=body, headers=headers)
        assert ok.status_code == 200, ok.text
        assert ok.json()["output"]["message"]["content"] == [{"text": "echo: hi"}]
        tampered = http.post(httpx.URL(url), content=body.replace(b"hi", b"ho"), headers=headers)
    assert tampered.status_code == 403 and "signature we calculated does not match" in tampered.json()["message"]
    assert tampered.headers["x-amzn-errortype"] == "AccessDeniedException"


def test_a_stream_exception_ends_the_stream_with_an_error(gw):
    gateway, up = gw
    up.control(error_after=3)
    try:
        with pytest.raises(openai.APIError) as err:
            list(chat(gateway, "br/amazon.nova-pro-v1:0", stream=True))
    finally:
        up.control(error_after=None)
    assert "throttlingException" in str(err.value)
