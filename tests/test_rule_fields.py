"""Rules on agent traffic through a live gateway: offered tools, forced tools, response formats,
body fields by path, and CIDR ranges on the client address."""
from __future__ import annotations

import openai
import pytest

from edgerules import Source, build_policy

POLICY = '''
provider demo { format echo }
rule no_shell {
    when "shell" in tools
    deny 403 "the shell tool is not allowed"
}
rule loopback_only_for_json {
    when response_format == "json_schema" and ip not in ["127.0.0.0/8", "::1/128"]
    deny 403 "structured output from inside only"
}
rule team_tag {
    when body.metadata.team in ["research"] and body.reasoning_effort == "high"
    tag "research-high"
}
rule forced {
    when forces_tool
    tag "forced"
}
rule r { route demo/echo }
'''
TOOL = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}}
SHELL = {"type": "function", "function": {"name": "shell", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture
def gw(gateways):
    return gateways(POLICY)


def test_a_request_offering_the_shell_tool_is_denied_through_the_sdk(gw):
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="m", messages=ASK, tools=[TOOL, SHELL])
    assert "the shell tool is not allowed" in str(info.value)
    ok = client.chat.completions.with_raw_response.create(model="m", messages=ASK, tools=[TOOL])
    assert ok.http_response.status_code == 200
    assert ok.headers["x-edgerules-rules"] == "r"


def test_body_fields_and_forced_tools_are_read_by_path(gw):
    body = {"model": "m", "messages": ASK, "metadata": {"team": "research"}, "reasoning_effort": "high",
            "tools": [TOOL], "tool_choice": "required"}
    answer = gw.http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200
    assert answer.headers["x-edgerules-rules"] == "team_tag,forced,r"
    mistyped = {**body, "reasoning_effort": 3, "tool_choice": "auto"}
    assert gw.http.post("/v1/chat/completions", json=mistyped).headers["x-edgerules-rules"] == "r"


def test_a_cidr_rule_on_the_client_address():
    policy = build_policy([Source("p.rules", POLICY)])
    body = {"model": "m", "messages": ASK, "response_format": {"type": "json_schema"}}
    for ip, denied in (("127.0.0.1", False), ("127.9.9.9", False), ("::1", False), ("10.0.0.1", True),
                       ("2001:db8::1", True), ("not an address", True)):
        for engine in ("compiled", "interpreted"):
            decision = policy.decide(body, ip=ip, engine=engine)
            assert (decision.deny is not None) == denied, (ip, engine)


def test_the_live_gateway_lets_loopback_through_the_cidr_rule(gw):
    body = {"model": "m", "messages": ASK, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}
    assert gw.http.post("/v1/chat/completions", json=body).status_code == 200
