"""Reading and validating a request body: size limit, JSON, and the fields the gateway relies on."""
from __future__ import annotations

import orjson
from starlette.requests import Request

from ..lang.schema import METADATA_HEADER, body_error, metadata_error
from .errors import GatewayError

# Deep enough for any real request; shallow enough that every later orjson.dumps (cache key,
# access log, provider payload; orjson stops at 255 levels) and every walk of the body succeeds.
MAX_DEPTH = 64
MAX_MODEL_LENGTH = 256
MAX_TOKENS = 2**31 - 1       # beyond any context window; keeps budgets far from 64-bit counters
MAX_CHOICES = 128
MAX_DIMENSIONS = 65_536

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
    # Brackets bound the depth from above: most bodies skip the walk (a bracket in a string only
    # costs a walk that finds nothing).
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and (name := _too_deep(body)) is not None:
        raise GatewayError(400, f"'{name}' nests JSON deeper than {MAX_DEPTH} levels", param=name,
                           code="invalid_json")
    return body


def _too_deep(body: dict) -> str | None:
    """The top-level field whose containers nest more than MAX_DEPTH levels (the body itself being
    the first), or None; a loop, so no recursion limit."""
    stack = [(value, 2, name) for name, value in body.items()
             if value.__class__ is dict or value.__class__ is list]
    while stack:
        value, depth, name = stack.pop()
        if depth > MAX_DEPTH:
            return name
        for child in (value.values() if value.__class__ is dict else value):
            if child.__class__ is dict or child.__class__ is list:
                stack.append((child, depth + 1, name))
    return None


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
        if content is not None and content.__class__ is not str:
            if not isinstance(content, list):
                raise _bad(f"'messages[{i}].content' must be a string or an array", f"messages[{i}].content")
            _validate_parts(content, f"messages[{i}].content")
    _validate_fields(body, _CHAT_FIELDS)
    _common(body, messages_checked=True)


def validate_embeddings(body: dict) -> None:
    _validate_model(body)
    inp = body.get("input")
    if inp is None:
        raise _bad("'input' is required", "input", "missing_required_parameter")
    if inp.__class__ is not str:
        if not isinstance(inp, list) or not inp:
            raise _bad("'input' must be a string or a non-empty array", "input")
        _validate_inputs(inp)
    _validate_fields(body, _EMBEDDINGS_FIELDS)
    _common(body)


def _validate_model(body: dict) -> None:
    model = body.get("model")
    if model is None:
        raise _bad("you must provide a model parameter", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _bad("'model' must be a non-empty string", "model")
    # The model ends up in upstream URLs, payloads and answer headers: no control characters.
    if len(model) > MAX_MODEL_LENGTH or not model.isprintable():
        raise _bad(f"'model' must be printable text of at most {MAX_MODEL_LENGTH} characters", "model",
                   "invalid_value")


def _validate_parts(parts: list, where: str) -> None:
    """Content parts as OpenAI defines them: objects with a string `type`; text and image_url
    parts with the string fields that providers translate."""
    for j, part in enumerate(parts):
        param = f"{where}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"'{param}' must be an object with a string 'type'", param)
        kind = part["type"]
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _bad(f"'{param}.text' must be a string", f"{param}.text")
        if kind == "image_url":
            ref = part.get("image_url")
            if not isinstance(ref, dict) or not isinstance(ref.get("url"), str):
                raise _bad(f"'{param}.image_url.url' must be a string", f"{param}.image_url.url")


def _validate_inputs(items: list) -> None:
    """Embedding inputs: strings, token arrays, or arrays of token arrays."""
    if items[0].__class__ is str or items[0].__class__ is list:
        for k, item in enumerate(items):
            if item.__class__ is list:
                if not all(t.__class__ is int for t in item):
                    raise _bad(f"'input[{k}]' must be an array of integer tokens", f"input[{k}]")
            elif item.__class__ is not str:
                raise _bad(f"'input[{k}]' must be a string or an array of integer tokens", f"input[{k}]")
    elif not all(t.__class__ is int for t in items):
        raise _bad("'input' must be strings or integer tokens", "input")


# ---- optional fields: a checker per name, run only for the names a body has -------------------

def _number(name: str, value) -> None:
    if value.__class__ is not float and value.__class__ is not int:
        raise _bad(f"'{name}' must be a number", name)


def _int_in(low: int, high: int):
    def check(name: str, value) -> None:
        if value.__class__ is not int:
            raise _bad(f"'{name}' must be an integer", name)
        if not low <= value <= high:
            raise _bad(f"'{name}' must be between {low} and {high}", name, "invalid_value")
    return check


def _string(name: str, value) -> None:
    if value.__class__ is not str:
        raise _bad(f"'{name}' must be a string", name)


def _stop(name: str, value) -> None:
    if value.__class__ is not str and not (isinstance(value, list) and all(s.__class__ is str for s in value)):
        raise _bad(f"'{name}' must be a string or an array of strings", name)


def _object(name: str, value) -> None:
    if value.__class__ is not dict:
        raise _bad(f"'{name}' must be an object", name)


def _array(name: str, value) -> None:
    if value.__class__ is not list:
        raise _bad(f"'{name}' must be an array", name)


_CHAT_FIELDS = {
    "temperature": _number, "top_p": _number, "presence_penalty": _number, "frequency_penalty": _number,
    "max_tokens": _int_in(0, MAX_TOKENS), "max_completion_tokens": _int_in(0, MAX_TOKENS),
    "n": _int_in(1, MAX_CHOICES), "stop": _stop, "user": _string, "stream_options": _object,
    "tools": _array, "functions": _array, "logit_bias": _object,
}
_EMBEDDINGS_FIELDS = {
    "dimensions": _int_in(1, MAX_DIMENSIONS), "encoding_format": _string, "user": _string,
}


def _validate_fields(body: dict, checks: dict) -> None:
    for name, value in body.items():
        check = checks.get(name)
        if check is not None and value is not None:
            check(name, value)


def _common(body: dict, messages_checked: bool = False) -> None:
    problem = body_error(body, check_messages=not messages_checked)
    if problem is not None:
        raise _bad(problem[0], problem[1])


def validate_metadata(headers) -> None:
    raw = headers.get(METADATA_HEADER)
    if not raw:
        return
    problem = metadata_error(raw)
    deep = problem is None and raw.count("[") + raw.count("{") > MAX_DEPTH
    if deep and _too_deep(orjson.loads(raw)) is not None:
        problem = f"header '{METADATA_HEADER}' nests JSON deeper than {MAX_DEPTH} levels"
    if problem is not None:
        raise GatewayError(400, problem, param=METADATA_HEADER, code="invalid_metadata")
