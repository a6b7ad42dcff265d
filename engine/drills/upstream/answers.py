"""What the fake upstream says, per format: echo answers, stream events and error bodies (pure)."""
from __future__ import annotations

from http import HTTPStatus

import orjson

from ...gateway.providers import echo
from ...gateway.providers.base import DONE
from . import toolcalls

MODELS = ("echo",)
_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                 404: "not_found_error", 429: "rate_limit_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    529: "overloaded_error"}


# ---- errors ------------------------------------------------------------------------------------

def error_body(format: str, status: int, message: str) -> dict:
    if format in ("gemini", "bedrock"):
        from . import bedrock, gemini
        return (gemini if format == "gemini" else bedrock).error_body(status, message)
    if format == "anthropic":
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None,
                      "code": "invalid_api_key" if status == 401 else None}}


def error_event(format: str) -> bytes:
    """The SSE event (the event-stream exception for bedrock) that ends a stream with an injected error."""
    if format in ("gemini", "bedrock"):
        from . import bedrock, gemini
        return gemini.error_event() if format == "gemini" else bedrock.exception_frame()
    if format == "anthropic":
        payload = {"type": "error",
                   "error": {"type": "overloaded_error", "message": "injected stream error: overloaded"}}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
    payload = {"error": {"message": "injected stream error: server error", "type": "server_error",
                         "param": None, "code": None}}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def injected_message(status: int, headers: list) -> str:
    if status == 401:
        # Some real servers echo the presented key; doing it here lets tests prove the gateway redacts it.
        keys = [v.decode("latin-1") for k, v in headers
                if k in (b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key")]
        presented = keys[0] if keys else ""
        return f"incorrect API key provided: {presented.removeprefix('Bearer ')}"
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "overloaded" if status == 529 else "error"
    return f"injected failure: {status} {phrase}"


def model_list(format: str) -> dict:
    if format == "anthropic":
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}
                for m in MODELS]
        return {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "edgerules"}
                                       for m in MODELS]}


# ---- OpenAI ------------------------------------------------------------------------------------

def chat_problem(request: dict) -> str | None:
    if not isinstance(request.get("model"), str):
        return "you must provide a model parameter"
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    return None


def embeddings_problem(request: dict) -> str | None:
    if not isinstance(request.get("model"), str):
        return "you must provide a model parameter"
    if request.get("input") in (None, "", []):
        return "'input' is a required property and must not be empty"
    return None


def openai_calls(request: dict) -> list[tuple[str, dict]]:
    """The tool calls an OpenAI chat request gets: see toolcalls.plan."""
    tools = [(t["function"]["name"], t["function"].get("parameters"))
             for t in request.get("tools") or () if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    messages = request["messages"]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    choice = request.get("tool_choice")
    forced = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    return toolcalls.plan(tools, last.get("role") == "user", forced, echo.message_text(last.get("content")),
                          choice != "none")


def _structured(request: dict) -> str | None:
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return toolcalls.dumps(toolcalls.example((fmt.get("json_schema") or {}).get("schema")))
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return "{}"
    return None


def _echo_request(request: dict) -> dict:
    """The request the echo answers: after tool results, those results read as the user's turn."""
    messages = request["messages"]
    results = []
    for message in reversed(messages):
        if not (isinstance(message, dict) and message.get("role") == "tool"):
            break
        results.insert(0, echo.message_text(message.get("content")))
    if not results:
        return request
    return {**request, "messages": [*messages, {"role": "user", "content": " ".join(results)}]}


def openai_completion(request: dict) -> dict:
    answer = echo.completion(_echo_request(request), request["model"])
    calls = openai_calls(request)
    structured = _structured(request)
    message = answer["choices"][0]["message"]
    if calls:
        message["content"] = None
        message["tool_calls"] = [{"id": toolcalls.call_id("call_", request["messages"], i), "type": "function",
                                  "function": {"name": name, "arguments": toolcalls.dumps(args)}}
                                 for i, (name, args) in enumerate(calls)]
        answer["choices"][0]["finish_reason"] = "tool_calls"
    elif structured is not None:
        message["content"] = structured
    return answer


def openai_stream_frames(request: dict) -> list[bytes]:
    calls = openai_calls(request)
    if calls:
        events = _openai_call_events(request, calls)
    else:
        structured = _structured(request)
        events = echo.stream_events(_echo_request(request), request["model"])
        if structured is not None:
            events = _openai_call_events(request, [], structured)
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [DONE]


def _openai_call_events(request: dict, calls: list, text: str | None = None) -> list[dict]:
    """A streamed answer of tool calls (each: a first delta with id and name, then argument
    pieces), or of a structured text."""
    head = {"id": echo.answer_id(request, request["model"]), "object": "chat.completion.chunk",
            "created": echo.CREATED, "model": request["model"]}
    options = request.get("stream_options")
    with_usage = isinstance(options, dict) and bool(options.get("include_usage"))

    def chunk(delta: dict, finish: str | None = None) -> dict:
        out = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return {**out, "usage": None} if with_usage else out

    events = [chunk({"role": "assistant", "content": None if calls else ""})]
    produced = ""
    for i, (name, args) in enumerate(calls):
        start = {"index": i, "id": toolcalls.call_id("call_", request["messages"], i), "type": "function",
                 "function": {"name": name, "arguments": ""}}
        events.append(chunk({"tool_calls": [start]}))
        text_args = toolcalls.dumps(args)
        produced += text_args
        events += [chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                   for piece in toolcalls.pieces(text_args)]
    if text is not None:
        produced = text
        events += [chunk({"content": piece}) for piece in toolcalls.pieces(text)]
    events.append(chunk({}, "tool_calls" if calls else "stop"))
    if with_usage:
        prompt, done = echo.prompt_tokens(request), echo.estimate_tokens(produced)
        events.append({**head, "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": done,
                                                        "total_tokens": prompt + done}})
    return events


# ---- Anthropic ---------------------------------------------------------------------------------

def messages_problem(request: dict) -> str | None:
    if not isinstance(request.get("model"), str):
        return "model: Field required"
    if not isinstance(request.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f'messages.{i}.role: Input should be "user" or "assistant"'
    return None


def _as_echo_body(request: dict) -> dict:
    system = request.get("system")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": m["role"], "content": _result_text(m.get("content"))} for m in request["messages"]]
    return {"messages": messages, "stop": request.get("stop_sequences"), "max_tokens": request["max_tokens"]}


def _anthropic_answer(request: dict) -> tuple[str, str, str | None, int, str]:
    body = _as_echo_body(request)
    content, finish, matched = echo.answer(body)
    reason = "stop_sequence" if matched else "max_tokens" if finish == "length" else "end_turn"
    answer_id = echo.answer_id(body, request["model"], "msg_echo_")
    return content, reason, matched, echo.prompt_tokens(body), answer_id


def _result_text(content):
    """Tool results read as text, so the answer after a tool round trip echoes the result."""
    if not isinstance(content, list):
        return content
    out = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            out.append({"type": "text", "text": inner if isinstance(inner, str) else echo.message_text(inner)})
        else:
            out.append(block)
    return out


def anthropic_calls(request: dict) -> list[tuple[str, dict]]:
    tools = [(t["name"], t.get("input_schema")) for t in request.get("tools") or ()
             if isinstance(t, dict) and isinstance(t.get("name"), str)]
    last = request["messages"][-1]
    content = last.get("content")
    results = isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result"
                                                for b in content)
    choice = request.get("tool_choice") if isinstance(request.get("tool_choice"), dict) else {}
    forced = choice.get("name") if choice.get("type") == "tool" else None
    return toolcalls.plan(tools, last.get("role") == "user" and not results, forced,
                          echo.message_text(content), choice.get("type") != "none")


def anthropic_message(request: dict) -> dict:
    """The echo answer to an Anthropic Messages request, in Anthropic's shape."""
    content, reason, matched, prompt, answer_id = _anthropic_answer(request)
    calls = anthropic_calls(request)
    if calls:
        blocks = [{"type": "tool_use", "id": toolcalls.call_id("toolu_", request["messages"], i), "name": name,
                   "input": args} for i, (name, args) in enumerate(calls)]
        return {"id": answer_id, "type": "message", "role": "assistant", "model": request["model"],
                "content": blocks, "stop_reason": "tool_use", "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": echo.estimate_tokens(toolcalls.dumps(blocks))}}
    return {"id": answer_id, "type": "message", "role": "assistant", "model": request["model"],
            "content": [{"type": "text", "text": content}], "stop_reason": reason, "stop_sequence": matched,
            "usage": {"input_tokens": prompt, "output_tokens": echo.estimate_tokens(content)}}


def anthropic_stream_events(request: dict) -> list[dict]:
    """The echo answer as the event sequence Anthropic streams."""
    content, reason, matched, prompt, answer_id = _anthropic_answer(request)
    calls = anthropic_calls(request)
    if calls:
        return _anthropic_call_events(request, calls, prompt, answer_id)
    start = {"id": answer_id, "type": "message", "role": "assistant", "model": request["model"],
             "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": prompt, "output_tokens": 1}}
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
          for piece in echo.split_pieces(content)),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": matched},
         "usage": {"output_tokens": echo.estimate_tokens(content)}},
        {"type": "message_stop"},
    ]


def _anthropic_call_events(request: dict, calls: list, prompt: int, answer_id: str) -> list[dict]:
    start = {"id": answer_id, "type": "message", "role": "assistant", "model": request["model"],
             "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": prompt, "output_tokens": 1}}
    events: list[dict] = [{"type": "message_start", "message": start}]
    produced = ""
    for i, (name, args) in enumerate(calls):
        block = {"type": "tool_use", "id": toolcalls.call_id("toolu_", request["messages"], i), "name": name,
                 "input": {}}
        events.append({"type": "content_block_start", "index": i, "content_block": block})
        text = toolcalls.dumps(args)
        produced += text
        events += [{"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": piece}} for piece in toolcalls.pieces(text)]
        events.append({"type": "content_block_stop", "index": i})
    events.append({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                   "usage": {"output_tokens": echo.estimate_tokens(produced)}})
    events.append({"type": "message_stop"})
    return events


def anthropic_stream_frames(request: dict) -> list[bytes]:
    return [b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
            for e in anthropic_stream_events(request)]
