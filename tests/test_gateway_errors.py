"""Every failure answers in OpenAI's error shape with a specific status; secrets never leak."""
from __future__ import annotations

import httpx
import openai
import pytest

from gw import start_gateway

KEY_CANARY = "gw-key-CANARY-7f3a9c"
PROVIDER_CANARY = "sk-provider-CANARY-51b2e0"

POLICY = """
provider up { url "{url}" api_key env("EDGERULES_TEST_PROVIDER_KEY") }
provider down { url "http://127.0.0.1:9/v1" }
key team { secret env("EDGERULES_TEST_KEY") }

rule blocked {
    when header("x-blocked") == "yes"
    deny 403 "you are blocked"
}
rule team_only {
    when model == "secret-model" and key != "team"
    deny 404 "no such model"
}
rule broken {
    when model == "broken"
    route down/m
}
rule good {
    when model in ["good", "secret-model"]
    route up/m
}
"""


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    env = {"EDGERULES_TEST_KEY": KEY_CANARY, "EDGERULES_TEST_PROVIDER_KEY": PROVIDER_CANARY}
    gw = start_gateway(POLICY.replace("{url}", upstream.url), tmp_path_factory.mktemp("errors"),
                       "--no-watch", "--max-body", "2KiB", env=env)
    yield gw
    gw.stop()
    output = gw.output()
    assert KEY_CANARY not in output and PROVIDER_CANARY not in output


AUTH = {"authorization": f"Bearer {KEY_CANARY}"}
MSG = [{"role": "user", "content": "hi"}]


def _error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    for canary in (KEY_CANARY, PROVIDER_CANARY):
        assert canary not in resp.text and canary not in str(resp.headers)
    return body["error"]


def test_missing_key_is_401_and_no_upstream_call(gateway, upstream):
    before = upstream.stats()["chat"]
    _error(gateway.post("/v1/chat/completions", json={"model": "good", "messages": MSG}), 401, "missing_api_key")
    _error(gateway.post("/v1/chat/completions", json={"model": "good", "messages": MSG},
                        headers={"authorization": "Bearer wrong"}), 401, "invalid_api_key")
    _error(gateway.post("/v1/chat/completions", json={"model": "good", "messages": MSG},
                        headers={"authorization": f"Basic {KEY_CANARY}"}), 401, "invalid_api_key")
    assert upstream.stats()["chat"] == before


def test_key_authenticates_and_is_not_forwarded(gateway, upstream):
    resp = gateway.post("/v1/chat/completions", json={"model": "secret-model", "messages": MSG}, headers=AUTH)
    assert resp.status_code == 200
    assert upstream.stats()["last_headers"]["authorization"] == f"Bearer {PROVIDER_CANARY}"
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY_CANARY, max_retries=0)
    assert client.chat.completions.create(model="good", messages=MSG).choices[0].message.content == "echo: hi"


def test_malformed_json_is_400(gateway):
    err = _error(gateway.post("/v1/chat/completions", content=b"{nope", headers=AUTH), 400, "invalid_json")
    assert "not valid JSON" in err["message"]
    _error(gateway.post("/v1/chat/completions", content=b"[1, 2]", headers=AUTH), 400, "invalid_json")
    _error(gateway.post("/v1/chat/completions", content=b"", headers=AUTH), 400, "invalid_json")


@pytest.mark.parametrize("body, param", [
    ({"model": 5, "messages": MSG}, "model"),
    ({"messages": MSG}, "model"),
    ({"model": "good"}, "messages"),
    ({"model": "good", "messages": "hi"}, "messages"),
    ({"model": "good", "messages": [{"content": "x"}]}, "messages[0].role"),
    ({"model": "good", "messages": MSG, "temperature": "hot"}, "temperature"),
    ({"model": "good", "messages": MSG, "stream": "yes"}, "stream"),
    ({"model": "good", "messages": MSG, "max_tokens": True}, "max_tokens"),
])
def test_wrong_field_types_are_400_naming_the_param(gateway, body, param):
    err = _error(gateway.post("/v1/chat/completions", json=body, headers=AUTH), 400)
    assert err["param"] == param


def test_bad_metadata_header_is_400(gateway):
    err = _error(gateway.post("/v1/chat/completions", json={"model": "good", "messages": MSG},
                              headers={**AUTH, "x-edgerules-metadata": "{not json"}), 400, "invalid_metadata")
    assert "x-edgerules-metadata" in err["message"]


def test_deny_answers_its_status_and_message(gateway):
    err = _error(gateway.post("/v1/chat/completions", json={"model": "good", "messages": MSG},
                              headers={**AUTH, "x-blocked": "yes"}), 403, "denied_by_policy")
    assert err["message"] == "you are blocked"


def test_unknown_model_is_404_model_not_found(gateway):
    err = _error(gateway.post("/v1/chat/completions", json={"model": "gpt-17", "messages": MSG},
                              headers=AUTH), 404, "model_not_found")
    assert "gpt-17" in err["message"] and err["param"] == "model"


def test_body_over_the_limit_is_413(gateway):
    big = {"model": "good", "messages": [{"role": "user", "content": "x" * 5000}]}
    _error(gateway.post("/v1/chat/completions", json=big, headers=AUTH), 413, "request_too_large")

    def chunks():                       # chunked: no Content-Length
        yield b'{"model": "good", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'
    resp = gateway.post("/v1/chat/completions", content=chunks(), headers=AUTH)
    assert "content-length" not in resp.request.headers
    _error(resp, 413, "request_too_large")


def test_all_targets_failed_is_502_naming_the_last_error(gateway):
    err = _error(gateway.post("/v1/chat/completions", json={"model": "broken", "messages": MSG},
                              headers=AUTH), 502, "upstream_error")
    assert "cannot connect to upstream 'down'" in err["message"]


def test_upstream_error_messages_never_carry_the_provider_key(gateway, upstream):
    upstream.control(fail_next=1, fail_status=401)
    resp = gateway.post("/v1/chat/completions", json={"model": "good", "messages": MSG}, headers=AUTH)
    _error(resp, 502)


def test_unknown_endpoint_and_method(gateway):
    _error(gateway.http.get("/v2/nothing"), 404, "not_found")
    _error(gateway.http.get("/v1/chat/completions"), 405)


def test_admin_endpoints_answer_on_loopback(gateway):
    info = gateway.http.get("/admin/policy").json()
    assert info["version"] and info["files"] and info["last_error"] is None
    assert KEY_CANARY not in str(info) and PROVIDER_CANARY not in str(info)
