"""Canaries: provider keys and gateway key secrets planted by a hostile upstream (and by a client)
never reach an answer, a stream or the gateway's log, wherever they sit and however they are cut."""
from __future__ import annotations

import httpx
import openai
import pytest

from edgerules.gateway.redact import Redactor
from gw import start_gateway

PROVIDER_KEY = "sk-canary-provider-0123456789abcdefghijkl"
GATEWAY_KEY = "sk-canary-gateway-ZYXWVUTSRQPONMLKJIHGFE"
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
POLICY = """
provider up   { url "{url}" api_key env("CANARY_PROVIDER_KEY") }
provider demo { format echo }
key team { secret env("CANARY_GATEWAY_KEY") }
rule echo { when model == "echo" route demo/echo }
rule pass { route up }
"""

def pieces(secret: str, width: int = 10) -> list[str]:
    """Every `width`-character piece of a secret: a cut secret still shows one of them."""
    return [secret[i:i + width] for i in range(len(secret) - width + 1)]


def assert_clean(text: str, where: str) -> None:
    for secret in (PROVIDER_KEY, GATEWAY_KEY):
        leaked = [p for p in pieces(secret) if p in text]
        assert not leaked, f"{where} shows part of a secret: {leaked[:3]}"


@pytest.fixture(scope="module")
def gateway(hostile, tmp_path_factory):
    gw = start_gateway(POLICY.replace("{url}", hostile.url),
                       tmp_path_factory.mktemp("secrets"), "--no-watch",
                       env={"CANARY_PROVIDER_KEY": PROVIDER_KEY, "CANARY_GATEWAY_KEY": GATEWAY_KEY})
    yield gw
    gw.stop()


def test_redactor_replaces_every_secret_and_cuts_only_after():
    redactor = Redactor(["short", None, "a-secret-0123", "a-secret-0123-longer"])
    assert redactor.texts == ("a-secret-0123-longer", "a-secret-0123")   # short ones are not secrets
    assert redactor.text("x a-secret-0123-longer y a-secret-0123") == "x [redacted] y [redacted]"
    assert redactor.bytes(b"<a-secret-0123>") == b"<[redacted]>"
    cut = redactor.message("e" * 590 + "a-secret-0123" + "z" * 50)
    assert "a-secret" not in cut and cut.endswith("...")
    assert not Redactor([None, ""]) and Redactor(["a-secret-0123"])


def test_a_200_whose_body_is_an_error_echoing_the_key_is_a_redacted_502(gateway):
    resp = gateway.chat("error-200", headers=AUTH)
    assert resp.status_code == 502, resp.text
    assert "[redacted]" in resp.json()["error"]["message"]
    assert_clean(resp.text, "the answer")


def test_an_answer_echoing_the_key_is_redacted(gateway):
    resp = gateway.chat("echo-answer", headers=AUTH)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "your key is [redacted], keep it safe"
    assert_clean(resp.text, "the answer")


def test_a_key_split_over_two_network_reads_is_redacted_in_the_stream(gateway):
    client = openai.OpenAI(base_url=gateway.base_url, api_key=GATEWAY_KEY, max_retries=0,
                           http_client=httpx.Client(trust_env=False))
    chunks = list(client.chat.completions.create(model="echo-stream", stream=True,
                                                 messages=[{"role": "user", "content": "x"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello. your key is [redacted]!"
    with gateway.http.stream("POST", "/v1/chat/completions", headers=AUTH, json={
            "model": "echo-stream", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as resp:
        raw = resp.read().decode()
    assert raw.rstrip().endswith("data: [DONE]")
    assert_clean(raw, "the stream")


@pytest.mark.parametrize("model", ["long-error-text", "long-error-json"])
def test_error_text_is_redacted_before_it_is_cut(gateway, model):
    resp = gateway.chat(model, headers=AUTH)
    assert resp.status_code == 502
    assert "[redacted]" in resp.json()["error"]["message"]
    assert_clean(resp.text, "the error")


def test_a_gateway_secret_in_an_answer_is_redacted(gateway):
    resp = gateway.chat("echo", f"my key is {GATEWAY_KEY}", headers=AUTH)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "echo: my key is [redacted]"


def test_the_log_never_shows_a_secret(gateway):
    # Runs last in this module: every canary above has been through the gateway by now.
    gateway.chat("error-200", headers=AUTH)
    gateway.wait_for_output("edgerules.access", 2)
    assert_clean(gateway.output(), "the gateway's log")
