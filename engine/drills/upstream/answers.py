"""What the fake upstream says, per format: echo answers, stream events and error bodies (pure)."""
from __future__ import annotations

from http import HTTPStatus

import orjson

from ...gateway.providers import echo
from ...gateway.providers.base import DONE

MODELS = ("echo",)
_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                 404: "not_found_error", 429: "rate_limit_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    529: "overloaded_error"}


# ---- errors ------------------------------------------------------------------------------------

def error_body(format: str, status: int, message: str) -> dict:
    if format == "anthropic":
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None,
                      "code": "invalid_api_key" if status == 401 else None}}


def error_event(format: str) -> bytes:
    """The SSE event that ends a stream with an injected error."""
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
        keys = [v.decode("latin-1") for k, v in headers if k in (b"authorization", b"x-api-key")]
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


def openai_stream_frames(request: dict) -> list[bytes]:
    events = [orjson.dumps(e) for e in echo.stream_events(request, request["model"])]
    return [b"data: " + e + b"\n\n" for e in events] + [DONE]


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
    messages = ([{"role": "system", "content": system}] if system else []) + request["messages"]
    return {"messages": messages, "stop": request.get("stop_sequences"), "max_tokens": request["max_tokens"]}


def _anthropic_answer(request: dict) -> tuple[str, str, str | None, int, str]:
    body = _as_echo_body(request)
    content, finish, matched = echo.answer(body)
    reason = "stop_sequence" if matched else "max_tokens" if finish == "length" else "end_turn"
    answer_id = echo.answer_id(body, request["model"], "msg_echo_")
    return content, reason, matched, echo.prompt_tokens(body), answer_id


def anthropic_message(request: dict) -> dict:
    """The echo answer to an Anthropic Messages request, in Anthropic's shape."""
    content, reason, matched, prompt, answer_id = _anthropic_answer(request)
    return {"id": answer_id, "type": "message", "role": "assistant", "model": request["model"],
            "content": [{"type": "text", "text": content}], "stop_reason": reason, "stop_sequence": matched,
            "usage": {"input_tokens": prompt, "output_tokens": echo.estimate_tokens(content)}}


def anthropic_stream_events(request: dict) -> list[dict]:
    """The echo answer as the event sequence Anthropic streams."""
    content, reason, matched, prompt, answer_id = _anthropic_answer(request)
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


def anthropic_stream_frames(request: dict) -> list[bytes]:
    return [b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
            for e in anthropic_stream_events(request)]
