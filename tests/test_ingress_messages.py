"""POST /v1/messages with the official anthropic SDK, through a real gateway, to an openai-format
upstream (translated through chat completions) and an anthropic-format upstream (passed through)."""
from __future__ import annotations

import base64

import anthropic
import pytest

from gw import start_gateway
from procs import start_upstream

KEY = "sk-gw-messages-test"
POLICY = """
provider oa { format openai url "{oa}" api_key "sk-oa-test" }
provider an { format anthropic url "{an}" api_key "sk-an-test" }
key team {{ secret "{key}" }}
rule long_prompts {{ when path == "/v1/messages" and input_tokens > 5000 deny 413 "prompt too long" }}
rule to_openai {{ when model == "via-openai" route oa/gpt-test }}
rule to_anthropic {{ when model == "via-anthropic" route an/claude-test }}
"""
TOOL = {"name": "get_weather", "description": "the weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
PIXEL = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    oa, an = start_upstream(), start_upstream("--format", "anthropic")
    text = POLICY.replace("{oa}", oa.url).replace("{an}", an.url).replace("{key}", KEY)
    gw = start_gateway(text.replace("{{", "{").replace("}}", "}"), tmp_path_factory.mktemp("messages"),
                       "--no-watch")
    yield {"oa": oa, "an": an, "gw": gw}
    gw.stop()
    oa.stop()
    an.stop()


def client(setup) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=setup["gw"].url, api_key=KEY, max_retries=0)


@pytest.mark.parametrize("model", ["via-openai", "via-anthropic"])
def test_text_with_system(setup, model):
    message = client(setup).messages.create(model=model, max_tokens=200, system="be brief",
                                            messages=[{"role": "user", "content": "bonjour"}])
    assert message.type == "message" and message.role == "assistant"
    assert "bonjour" in message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_openai_upstream_gets_chat_and_anthropic_gets_the_body_as_sent(setup):
    client(setup).messages.create(model="via-openai", max_tokens=50, system="sys",
                                  messages=[{"role": "user", "content": "hi"}])
    sent = setup["oa"].stats()["last_body"]
    assert sent["model"] == "gpt-test" and sent["messages"][0] == {"role": "system", "content": "sys"}
    assert setup["oa"].stats()["last_headers"]["authorization"] == "Bearer sk-oa-test"
    client(setup).messages.create(model="via-anthropic", max_tokens=50, system="sys", extra_body={"top_k": 5},
                                  messages=[{"role": "user", "content": "hi"}])
    sent = setup["an"].stats()["last_body"]
    assert sent["model"] == "claude-test" and sent["system"] == "sys" and sent["top_k"] == 5
    assert setup["an"].stats()["last_headers"]["x-api-key"] == "sk-an-test"


@pytest.mark.parametrize("model", ["via-openai", "via-anthropic"])
def test_streaming(setup, model):
    with client(setup).messages.stream(model=model, max_tokens=200,
                                       messages=[{"role": "user", "content": "stream this please"}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds
    assert "stream this please" in final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0


def test_image_reaches_an_openai_upstream_as_an_image_url(setup):
    message = client(setup).messages.create(model="via-openai", max_tokens=100, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "text", "text": "what is this?"}]}])
    assert "what is this?" in message.content[0].text
    parts = setup["oa"].stats()["last_body"]["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}


def test_image_passes_through_to_anthropic(setup):
    client(setup).messages.create(model="via-anthropic", max_tokens=100, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "text", "text": "what is this?"}]}])
    assert setup["an"].stats()["last_body"]["messages"][0]["content"][0]["type"] == "image"


def test_tool_result_round_trip_to_openai(setup):
    """The second half of a tool loop: tool_use in the history and its tool_result become an
    assistant tool call and a `tool` message; the tools become function tools."""
    history = [{"role": "user", "content": "weather in Paris?"},
               {"role": "assistant", "content": [
                   {"type": "text", "text": "let me look"},
                   {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21C"},
                   {"type": "text", "text": "so, in one word?"}]}]
    message = client(setup).messages.create(model="via-openai", max_tokens=100, tools=[TOOL],
                                            tool_choice={"type": "none"}, messages=history)
    assert message.content[0].type == "text" and message.stop_reason == "end_turn"
    sent = setup["oa"].stats()["last_body"]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": TOOL["input_schema"], "description": TOOL["description"]}}]
    assert sent["tool_choice"] == "none"
    assistant, tool, user = sent["messages"][1:]
    assert assistant["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert assistant["tool_calls"][0]["id"] == "toolu_1" and assistant["content"] == "let me look"
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny, 21C"}
    assert user["content"] == [{"type": "text", "text": "so, in one word?"}]


def test_tool_use_round_trip_to_anthropic(setup):
    history = [{"role": "user", "content": "weather in Paris?"},
               {"role": "assistant", "content": [
                   {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]
    client(setup).messages.create(model="via-anthropic", max_tokens=100, tools=[TOOL], messages=history)
    sent = setup["an"].stats()["last_body"]
    assert sent["tools"] == [TOOL] and sent["messages"] == history


def test_tool_use_answer_from_an_openai_upstream(setup):
    """An openai-format upstream answering with a tool call gives the client a tool_use block,
    whole and streamed (input_json_delta); its result sent back gets a text answer."""
    question = [{"role": "user", "content": "weather in Paris?"}]
    message = client(setup).messages.create(model="via-openai", max_tokens=100, tools=[TOOL], messages=question)
    use = next(block for block in message.content if block.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "example"} and message.stop_reason == "tool_use"
    with client(setup).messages.stream(model="via-openai", max_tokens=100, tools=[TOOL], messages=question) as s:
        deltas = [e.delta.type for e in s if e.type == "content_block_delta"]
        final = s.get_final_message()
    assert "input_json_delta" in deltas and final.stop_reason == "tool_use"
    assert [b.input for b in final.content if b.type == "tool_use"] == [use.input]
    # The loop closes: the tool's result goes back and the answer is text.
    history = question + [{"role": "assistant", "content": [b.model_dump() for b in message.content]},
                          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                        "content": "sunny, 21C"}]}]
    answer = client(setup).messages.create(model="via-openai", max_tokens=100, tools=[TOOL], messages=history)
    assert answer.stop_reason == "end_turn" and "sunny, 21C" in answer.content[0].text


@pytest.mark.parametrize("model", ["via-openai", "via-anthropic"])
def test_parallel_tool_calls_stream_as_separate_blocks(setup, model):
    second = {**TOOL, "name": "get_time"}
    with client(setup).messages.stream(model=model, max_tokens=100, tools=[TOOL, second], messages=[
            {"role": "user", "content": "weather and time, in parallel"}]) as s:
        final = s.get_final_message()
    assert [b.name for b in final.content if b.type == "tool_use"] == ["get_weather", "get_time"]
    assert all(isinstance(b.input, dict) for b in final.content if b.type == "tool_use")


def test_fields_chat_cannot_carry_are_a_400_naming_them(setup):
    with pytest.raises(anthropic.BadRequestError) as err:
        client(setup).messages.create(model="via-openai", max_tokens=50, extra_body={"top_k": 5},
                                      messages=[{"role": "user", "content": "hi"}])
    assert "'top_k'" in err.value.message and "anthropic" in err.value.message


def test_auth_by_x_api_key_or_bearer(setup):
    gw = setup["gw"]
    body = {"model": "via-openai", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    assert gw.post("/v1/messages", json=body, headers={"x-api-key": KEY}).status_code == 200
    assert gw.post("/v1/messages", json=body, headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    refused = gw.post("/v1/messages", json=body, headers={"x-api-key": "wrong"})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    missing = gw.post("/v1/messages", json=body)
    assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]["message"]


def test_policy_sees_the_same_fields_and_the_path(setup):
    with pytest.raises(anthropic.APIStatusError) as err:
        client(setup).messages.create(model="via-openai", max_tokens=50,
                                      messages=[{"role": "user", "content": "x" * 30_000}])
    assert err.value.status_code == 413 and "prompt too long" in err.value.message
    # The same prompt on the chat endpoint is not denied: the rule names the path.
    resp = setup["gw"].chat("via-openai", "x" * 30_000, headers={"authorization": f"Bearer {KEY}"})
    assert resp.status_code == 200


def test_invalid_bodies_name_the_field(setup):
    gw = setup["gw"]
    headers = {"x-api-key": KEY}
    resp = gw.post("/v1/messages", json={"model": "via-openai", "messages": []}, headers=headers)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"
    resp = gw.post("/v1/messages", json={"model": "via-openai", "max_tokens": 5,
                                         "messages": [{"role": "system", "content": "x"}]}, headers=headers)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages[0]"


@pytest.mark.parametrize("model,name", [("via-openai", "oa"), ("via-anthropic", "an")])
def test_an_upstream_failing_mid_stream_is_an_error_event(setup, model, name):
    """Translated or passed through, a stream cut by the upstream ends with a named `error`
    event, which the SDK raises: never a silently shorter answer."""
    setup[name].control(error_after=3)
    try:
        with pytest.raises(anthropic.APIStatusError):
            with client(setup).messages.stream(model=model, max_tokens=200, messages=[
                    {"role": "user", "content": "a long enough answer to be cut"}]) as stream:
                for _ in stream:
                    pass
    finally:
        setup[name].reset()


@pytest.mark.parametrize("block,param", [
    ({"type": "tool_use", "id": "t1", "name": "f", "input": "not an object"}, "messages[0].content[0].input"),
    ({"type": "tool_result", "content": "x"}, "messages[0].content[0].tool_use_id"),
    ({"type": "text", "text": 5}, "messages[0].content[0].text"),
    ({"type": "image", "source": "x"}, "messages[0].content[0].source"),
])
def test_malformed_blocks_name_their_field(setup, block, param):
    resp = setup["gw"].post("/v1/messages", headers={"x-api-key": KEY}, json={
        "model": "via-openai", "max_tokens": 5, "messages": [{"role": "user", "content": [block]}]})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param
