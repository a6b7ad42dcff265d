"""POST /v1/responses with the official openai SDK, through a real gateway, to an openai-format
upstream (passed through) and an anthropic-format upstream (translated through chat completions)."""
from __future__ import annotations

import httpx
import openai
import orjson
import pytest

from gw import start_gateway
from procs import ESTABLISHED, client_connections, start_upstream, wait_until

POLICY = """
provider oa { format openai url "{oa}" api_key "sk-oa-test" }
provider an { format anthropic url "{an}" api_key "sk-an-test" }
rule big_answers { when path == "/v1/responses" and max_tokens > 100000 deny 400 "max_output_tokens too large" }
rule to_openai { when model == "via-openai" route oa/gpt-test }
rule to_anthropic { when model == "via-anthropic" route an/claude-test }
"""
TOOL = {"type": "function", "name": "get_weather", "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
MODELS = ["via-openai", "via-anthropic"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    oa, an = start_upstream(), start_upstream("--format", "anthropic")
    gw = start_gateway(POLICY.replace("{oa}", oa.url).replace("{an}", an.url),
                       tmp_path_factory.mktemp("responses"), "--no-watch")
    yield {"oa": oa, "an": an, "gw": gw}
    gw.stop()
    oa.stop()
    an.stop()


def client(setup) -> openai.OpenAI:
    return openai.OpenAI(base_url=setup["gw"].base_url, api_key="x", max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_plain(setup, model):
    response = client(setup).responses.create(model=model, input="bonjour", instructions="be brief",
                                              max_output_tokens=200)
    assert response.object == "response" and response.status == "completed"
    assert "bonjour" in response.output_text
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


def test_openai_upstream_gets_the_body_as_sent(setup):
    client(setup).responses.create(model="via-openai", input="hi", instructions="sys", store=False,
                                   text={"format": {"type": "text"}})
    sent = setup["oa"].stats()["last_body"]
    assert sent == {"model": "gpt-test", "input": "hi", "instructions": "sys", "store": False,
                    "text": {"format": {"type": "text"}}}
    assert setup["oa"].stats()["last_headers"]["authorization"] == "Bearer sk-oa-test"


def test_anthropic_upstream_gets_a_messages_request(setup):
    client(setup).responses.create(model="via-anthropic", instructions="sys", max_output_tokens=77, input=[
        {"role": "developer", "content": "dev note"},
        {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                     {"type": "input_image", "image_url": "https://example.com/a.png"}]}])
    sent = setup["an"].stats()["last_body"]
    assert sent["model"] == "claude-test" and sent["max_tokens"] == 77
    assert "sys" in str(sent["system"]) and "dev note" in str(sent["system"])
    assert sent["messages"][0]["content"][0] == {"type": "text", "text": "look"}
    assert sent["messages"][0]["content"][1]["type"] == "image"


@pytest.mark.parametrize("model", MODELS)
def test_streamed(setup, model):
    events = list(client(setup).responses.create(model=model, input="stream this please", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_item.added" in kinds and "response.output_text.delta" in kinds
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "stream this please" in text
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens > 0


def test_stream_helper_assembles_the_answer(setup):
    with client(setup).responses.stream(model="via-anthropic", input="assemble me") as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert "assemble me" in final.output_text
    with client(setup).responses.stream(model="via-anthropic", input="weather?", tools=[TOOL]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    [call] = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather" and orjson.loads(call.arguments) == {"city": "example"}


@pytest.mark.parametrize("model", MODELS)
def test_function_tool_round_trip(setup, model):
    first = client(setup).responses.create(model=model, input="weather in Paris?", tools=[TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    if not calls:
        pytest.skip(f"this fake upstream ({model}) does not answer with tool calls")
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and isinstance(call.arguments, str)
    second = client(setup).responses.create(model=model, tools=[TOOL], input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}])
    assert second.status == "completed" and second.output[0].type == "message"


@pytest.mark.parametrize("model", MODELS)
def test_function_tool_streamed(setup, model):
    events = list(client(setup).responses.create(model=model, input="weather in Paris?", tools=[TOOL],
                                                 stream=True))
    kinds = [e.type for e in events]
    if "response.function_call_arguments.delta" not in kinds:
        pytest.skip(f"this fake upstream ({model}) does not stream tool calls")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == deltas
    final = events[-1].response
    assert [i.arguments for i in final.output if i.type == "function_call"] == [deltas]


def test_an_agent_history_is_one_assistant_turn_for_anthropic(setup):
    """What the Agents SDK sends back: the answer's message item, its function calls, their outputs."""
    client(setup).responses.create(model="via-anthropic", tools=[TOOL], input=[
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "checking"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": "rainy"}])
    user, assistant, results = setup["an"].stats()["last_body"]["messages"]
    assert [b["type"] for b in assistant["content"]] == ["text", "tool_use", "tool_use"]
    assert [b["input"] for b in assistant["content"][1:]] == [{"city": "Paris"}, {"city": "Rome"}]
    assert [(b["tool_use_id"], b["content"]) for b in results["content"]] == [("c1", "sunny"), ("c2", "rainy")]


def test_tools_reach_anthropic_as_its_tools(setup):
    client(setup).responses.create(model="via-anthropic", input="hi", tools=[TOOL], tool_choice="auto")
    sent = setup["an"].stats()["last_body"]
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tools"][0]["input_schema"] == TOOL["parameters"]


def test_state_passes_through_to_openai_and_is_a_400_elsewhere(setup):
    client(setup).responses.create(model="via-openai", input="next", previous_response_id="resp_123", store=True)
    sent = setup["oa"].stats()["last_body"]
    assert sent["previous_response_id"] == "resp_123" and sent["store"] is True
    before = setup["an"].stats()["requests"]
    for fields in ({"previous_response_id": "resp_123"}, {"store": True}):
        with pytest.raises(openai.BadRequestError) as err:
            client(setup).responses.create(model="via-anthropic", input="next", **fields)
        assert next(iter(fields)) in err.value.message and "openai" in err.value.message
    assert setup["an"].stats()["requests"] == before


def test_what_chat_cannot_carry_is_a_400_naming_it(setup):
    with pytest.raises(openai.BadRequestError) as err:
        client(setup).responses.create(model="via-anthropic", input="hi", tools=[{"type": "web_search"}])
    assert "tools[0]" in err.value.message and "web_search" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client(setup).responses.create(model="via-anthropic", input="hi", top_logprobs=3)
    assert "'top_logprobs'" in err.value.message


def test_policy_reads_max_output_tokens_as_max_tokens(setup):
    with pytest.raises(openai.BadRequestError) as err:
        client(setup).responses.create(model="via-openai", input="hi", max_output_tokens=200000)
    assert "max_output_tokens too large" in err.value.message


def test_invalid_bodies_name_the_field(setup):
    gw = setup["gw"]
    resp = gw.post("/v1/responses", json={"model": "via-openai"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"
    resp = gw.post("/v1/responses", json={"model": "via-openai", "input": "x", "max_output_tokens": "many"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_output_tokens"


@pytest.mark.parametrize("model,name", [("via-openai", "oa"), ("via-anthropic", "an")])
def test_an_upstream_failing_mid_stream_raises_in_the_client(setup, model, name):
    setup[name].control(error_after=3)
    try:
        with pytest.raises(openai.APIError):
            for _ in client(setup).responses.create(model=model, input="a long enough answer to be cut",
                                                    stream=True):
                pass
    finally:
        setup[name].reset()


@pytest.mark.parametrize("item,param", [
    ({"type": "function_call", "call_id": "c1", "name": "f", "arguments": {"a": 1}}, "input[0].arguments"),
    ({"type": "function_call_output", "output": "x"}, "input[0].call_id"),
    ({"role": "user", "content": [{"text": "no type"}]}, "input[0].content"),
    ("just a string", "input[0]"),
])
def test_malformed_items_name_their_field(setup, item, param):
    resp = setup["gw"].post("/v1/responses", json={"model": "via-anthropic", "input": [item]})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param


SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
          "required": ["city", "celsius"], "additionalProperties": False}


@pytest.mark.parametrize("model", MODELS)
def test_text_format_json_schema(setup, model):
    response = client(setup).responses.create(model=model, input="the weather as JSON", text={
        "format": {"type": "json_schema", "name": "weather", "schema": SCHEMA, "strict": True}})
    assert set(orjson.loads(response.output_text)) == {"city", "celsius"}
    if model == "via-anthropic":   # carried as chat's response_format, which the provider maps
        sent = setup["an"].stats()["last_body"]
        assert sent["tools"][0]["input_schema"] == SCHEMA and sent["tool_choice"]["type"] == "tool"


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_a_client_leaving_mid_stream_closes_the_upstream_stream(upstreams, gateways, fmt):
    """Translated (anthropic) or passed through (openai), the upstream's slow stream is cut as soon
    as the client goes: no connection left generating for nobody."""
    up = upstreams("--format", fmt)
    gw = gateways(f'provider p {{ format {fmt} url "{up.url}" }}\nrule r {{ route p/m }}')
    up.control(chunk_delay="0.2s")
    with httpx.Client(base_url=gw.url, trust_env=False, timeout=60) as http:
        body = {"model": "m", "input": "a fairly long answer in many many pieces", "stream": True}
        with http.stream("POST", "/v1/responses", json=body) as held:
            lines = held.iter_lines()
            assert held.status_code == 200 and next(lines) == "event: response.created"
            assert ESTABLISHED in client_connections(up.port, gw.pid)
    wait_until(lambda: ESTABLISHED not in client_connections(up.port, gw.pid),
               what="the gateway to close its connection to the upstream")
