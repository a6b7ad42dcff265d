"""Reading and validating a request body: size limit, JSON, and the fields the gateway relies on."""
from __future__ import annotations

import orjson
from starlette.requests import Request

from ..lang.schema import METADATA_HEADER, body_error, metadata_error
from .errors import GatewayError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """"4MiB", "512KiB", "1mb", "1048576" -> bytes."""
    raw = text.strip().lower().replace("_", "")
    digits = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(digits):].strip()
    if not digits or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 4MiB, 512KiB or a number of bytes)")
    return int(float(digits) * _UNITS[unit])


async def read_json(request: Request, limit: int, length: str | None = None) -> dict:
    if length is not None:
        if not length.isdigit():
            raise GatewayError(400, "the Content-Length header is not a number", code="invalid_request")
        if int(length) > limit:
            raise _too_large(limit)
    raw = await _read_body(request.receive, limit)
    if not raw.strip():
        raise GatewayError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "the request body must be a JSON object", code="invalid_json")
    return body


async def _read_body(receive, limit: int) -> bytes:
    """The body from the ASGI channel: one message in the common case, no generator around it."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(400, "the client closed the connection before sending the whole body",
                               code="client_disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # chunked bodies have no Content-Length: count as they come
            raise _too_large(limit)
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"the request body is larger than the gateway's limit of {limit} bytes",
                        code="request_too_large")


def _bad(message: str, param: str, code: str = "invalid_type") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def validate_chat(body: dict) -> None:
    _validate_model(body)
    messages = body.get("messages")
    if messages is None:
        raise _bad("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise _bad(f"'messages[{i}]' must be an object", f"messages[{i}]")
        if not isinstance(msg.get("role"), str):
            raise _bad(f"'messages[{i}].role' must be a string", f"messages[{i}].role")
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _bad(f"'messages[{i}].content' must be a string or an array", f"messages[{i}].content")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    _common(body, messages_checked=True)


def validate_embeddings(body: dict) -> None:
    _validate_model(body)
    inp = body.get("input")
    if inp is None:
        raise _bad("'input' is required", "input", "missing_required_parameter")
    if not isinstance(inp, (str, list)) or (isinstance(inp, list) and not inp):
        raise _bad("'input' must be a string or a non-empty array", "input")
    _common(body)


def _validate_model(body: dict) -> None:
    model = body.get("model")
    if model is None:
        raise _bad("you must provide a model parameter", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _bad("'model' must be a non-empty string", "model")


def _common(body: dict, messages_checked: bool = False) -> None:
    problem = body_error(body, check_messages=not messages_checked)
    if problem is not None:
        raise _bad(problem[0], problem[1])


def validate_metadata(headers) -> None:
    problem = metadata_error(headers.get(METADATA_HEADER))
    if problem is not None:
        raise GatewayError(400, problem, param=METADATA_HEADER, code="invalid_metadata")
