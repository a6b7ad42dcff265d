"""Tool calls and structured output through a real gateway to real fake upstreams of every format,
with the official openai SDK as the agent: a tool call, a streamed one, parallel calls, the round
trip with the tool's result, response_format mapped or refused, and a fallback from openai to
anthropic that keeps the agent's tool call."""
from __future__ import annotations

import json

import openai
import pytest

from gw import start_gateway
from procs import start_upstream

FORMATS = ("openai", "anthropic", "azure", "gemini", "bedrock")
MODELS = {"openai": "oa/gpt-4o", "anthropic": "an/claude-sonnet-4", "azure": "az/gpt-4o",
          "gemini": "gem/gemini-2.0-flash", "bedrock": "br/anthropic.claude-3-5-sonnet-20240620-v1:0"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
ENV = {"AWS_AK": "AKIAEDGERULESTEST000", "AWS_SK": "edgerules/test/secret/key/0000000000000",
       "KEY": "sk-test-upstream-key-0001"}


def policy(ups: dict) -> str:
    return f"""
provider oa  {{ url "{ups['openai'].url}" api_key env("KEY") }}
provider an  {{ format anthropic url "{ups['anthropic'].url}" api_key env("KEY") }}
provider az  {{ format azure url "{ups['azure'].base}" api_key env("KEY") api_version "2024-10-21" }}
provider gem {{ format gemini url "{ups['gemini'].base}/v1beta" api_key env("KEY") }}
provider br  {{ format bedrock url "{ups['bedrock'].base}" region "us-east-1"
                access_key env("AWS_AK") secret_key env("AWS_SK") }}
provider down {{ url "{ups['down'].url}" api_key env("KEY") }}
rule agents {{ when model == "agent" route fallback [down/gpt-4o, an/claude-sonnet-4] }}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    ups = {fmt: start_upstream("--format", fmt) for fmt in FORMATS}
    ups["down"] = start_upstream("--fail-rate", "1")
    gateway = start_gateway(policy(ups), tmp_path_factory.mktemp("gw"), "--no-watch", env=ENV)
    try:
        yield gateway, ups
    finally:
        gateway.stop()
        for up in ups.values():
            up.stop()


def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)


def ask(text: str = "what is the weather in Paris?") -> list[dict]:
    return [{"role": "system", "content": "You are a helpful agent."}, {"role": "user", "content": text}]


@pytest.mark.parametrize("fmt", FORMATS)
def test_tool_call_and_round_trip(gw, fmt):
    gateway, _ = gw
    answer = client(gateway).chat.completions.create(model=MODELS[fmt], messages=ask(), tools=[WEATHER])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "example", "unit": "celsius"}
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    # The agent runs the tool and sends its result back: the answer is text again.
    messages = ask() + [choice.message.model_dump(exclude_none=True),
                        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'}]
    second = client(gateway).chat.completions.create(model=MODELS[fmt], messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    assert "clear" in second.choices[0].message.content


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_tool_call(gw, fmt):
    gateway, _ = gw
    stream = client(gateway).chat.completions.create(model=MODELS[fmt], messages=ask(), tools=[WEATHER], stream=True,
                                                     stream_options={"include_usage": True})
    calls: dict[int, dict] = {}
    finish, usage, deltas = None, None, 0
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for delta in c.delta.tool_calls or ():
                deltas += 1
                call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = delta.id or call["id"]
                if delta.function and delta.function.name:
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
    assert finish == "tool_calls" and list(calls) == [0]
    assert calls[0]["id"] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "example", "unit": "celsius"}
    if fmt != "gemini":   # Gemini sends a call whole; the others stream its arguments in pieces
        assert deltas > 1
    assert usage is not None and usage.total_tokens > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_parallel_tool_calls(gw, fmt):
    gateway, _ = gw
    answer = client(gateway).chat.completions.create(
        model=MODELS[fmt], messages=ask("weather and time, in parallel please"), tools=[WEATHER, TIME])
    names = [c.function.name for c in answer.choices[0].message.tool_calls]
    assert names == ["get_weather", "get_time"]
    assert len({c.id for c in answer.choices[0].message.tool_calls}) == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_forced_tool_choice(gw, fmt):
    gateway, _ = gw
    answer = client(gateway).chat.completions.create(
        model=MODELS[fmt], messages=ask(), tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [c.function.name for c in answer.choices[0].message.tool_calls] == ["get_time"]


SCHEMA = {"type": "json_schema", "json_schema": {"name": "city", "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"], "additionalProperties": False}}}


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "azure", "gemini", "bedrock"])
@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema(gw, fmt, stream):
    gateway, ups = gw
    c = client(gateway)
    if stream:
        chunks = c.chat.completions.create(model=MODELS[fmt], messages=ask("a city"), response_format=SCHEMA,
                                           stream=True)
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        answer = c.chat.completions.create(model=MODELS[fmt], messages=ask("a city"), response_format=SCHEMA)
        assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls
        text = answer.choices[0].message.content
    assert json.loads(text) == {"name": "example", "population": 1}
    sent = ups[fmt].stats()["last_body"]
    if fmt == "anthropic":
        assert sent["tool_choice"] == {"type": "tool", "name": "json_answer"}
        assert sent["tools"][0]["input_schema"]["required"] == ["name", "population"]
    elif fmt == "gemini":
        config = sent["generationConfig"]
        assert config["responseMimeType"] == "application/json"
        assert config["responseSchema"]["required"] == ["name", "population"]
        assert "additionalProperties" not in config["responseSchema"]   # outside Gemini's schema subset
    elif fmt == "bedrock":
        assert sent["toolConfig"]["toolChoice"] == {"tool": {"name": "json_answer"}}


@pytest.mark.parametrize("fmt, fields, named", [
    ("anthropic", {"logprobs": True}, "the field 'logprobs'"),
    ("anthropic", {"n": 2}, "n other than 1"),
    ("anthropic", {"response_format": SCHEMA, "tools": [WEATHER]}, "response_format json_schema together with tools"),
    ("bedrock", {"logit_bias": {"50256": -100}}, "the field 'logit_bias'"),
    ("bedrock", {"tools": [WEATHER], "tool_choice": "none"}, "tool_choice 'none'"),
    ("gemini", {"audio": {"voice": "alloy", "format": "mp3"}}, "the field 'audio'"),
    ("gemini", {"response_format": {"type": "grammar"}}, "response_format of type 'grammar'"),
])
def test_fields_a_format_cannot_carry_are_refused(gw, fmt, fields, named):
    gateway, ups = gw
    before = ups[fmt].stats()["chat"]
    with pytest.raises(openai.BadRequestError) as err:
        client(gateway).chat.completions.create(model=MODELS[fmt], messages=ask(), **fields)
    assert named in err.value.message and f"({fmt} format) does not translate" in err.value.message
    assert ups[fmt].stats()["chat"] == before   # refused before anything was sent


def test_dropped_fields_are_not_refused(gw):
    gateway, ups = gw
    answer = client(gateway).chat.completions.create(model=MODELS["anthropic"], messages=ask("hi"), seed=7,
                                                     frequency_penalty=0.5, logprobs=False)
    assert answer.choices[0].message.content == "echo: hi"
    sent = ups["anthropic"].stats()["last_body"]
    assert "seed" not in sent and "frequency_penalty" not in sent


def test_fallback_from_openai_to_anthropic_keeps_the_tool_call(gw):
    gateway, ups = gw
    before = ups["down"].stats()["chat"]
    for stream in (False, True):
        if stream:
            chunks = client(gateway).chat.completions.create(model="agent", messages=ask(), tools=[WEATHER],
                                                             stream=True)
            pieces = [d for ch in chunks for c in ch.choices for d in c.delta.tool_calls or ()]
            name = next(d.function.name for d in pieces if d.function and d.function.name)
            args = "".join(d.function.arguments or "" for d in pieces if d.function)
        else:
            answer = client(gateway).chat.completions.create(model="agent", messages=ask(), tools=[WEATHER])
            (call,) = answer.choices[0].message.tool_calls
            name, args = call.function.name, call.function.arguments
        assert name == "get_weather" and json.loads(args)["city"] == "example"
    assert ups["down"].stats()["chat"] == before + 2      # the first target was tried, and failed
    # The same agent against the openai target when it works: a tool call too.
    ups["down"].control(fail_rate=0)
    try:
        answer = client(gateway).chat.completions.create(model="agent", messages=ask(), tools=[WEATHER])
        assert answer.choices[0].message.tool_calls[0].function.name == "get_weather"
        assert answer.choices[0].message.tool_calls[0].id.startswith("call_")   # openai's own ids
    finally:
        ups["down"].control(fail_rate=1)


@pytest.mark.parametrize("fmt", ["gemini", "bedrock", "azure"])
def test_anthropic_sdk_agent_on_other_formats(gw, fmt):
    """/v1/messages is translated through the chat form to every format: the tool_use comes back."""
    anthropic = pytest.importorskip("anthropic")
    gateway, _ = gw
    agent = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0)
    tool = {"name": "get_weather", "description": "The weather in a city",
            "input_schema": WEATHER["function"]["parameters"]}
    message = agent.messages.create(model=MODELS[fmt], max_tokens=100, tools=[tool],
                                    messages=[{"role": "user", "content": "weather in Paris?"}])
    assert message.stop_reason == "tool_use"
    (use,) = [b for b in message.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "example", "unit": "celsius"}
    with agent.messages.stream(model=MODELS[fmt], max_tokens=100, tools=[tool],
                               messages=[{"role": "user", "content": "weather in Paris?"}]) as stream:
        final = stream.get_final_message()
    assert [b.input for b in final.content if b.type == "tool_use"] == [{"city": "example", "unit": "celsius"}]
    result = agent.messages.create(model=MODELS[fmt], max_tokens=100, tools=[tool], messages=[
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert result.stop_reason == "end_turn" and "sunny" in result.content[0].text
