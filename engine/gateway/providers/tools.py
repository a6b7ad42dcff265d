"""What the non-OpenAI formats share: reading an OpenAI chat body's tools, tool choice, structured
output and fields, and writing OpenAI `chat.completion.chunk` events back."""
from __future__ import annotations

import time

import orjson

from .base import DONE

# The forced tool that carries a `response_format` json_schema to a format without one.
ANSWER_TOOL = "json_answer"


class Untranslatable(ValueError):
    """A request feature with no counterpart in a format; the text names the feature."""


class StreamFailure(ValueError):
    """An error reported inside an upstream stream; the text is the upstream's message."""


def feed(provider, translator, data: bytes) -> list[bytes]:
    """The chat chunks a translator makes of one SSE `data` payload; a payload that is not JSON,
    or an error the upstream reported in the stream, ends it with the provider's 502."""
    try:
        return translator.feed(orjson.loads(data))
    except orjson.JSONDecodeError:
        raise provider.error(502, f"upstream '{provider.spec.name}' sent an event that is not JSON",
                             kind="stream") from None
    except StreamFailure as exc:
        raise provider.error(502, f"upstream '{provider.spec.name}' failed mid-stream: {exc}",
                             kind="stream") from None


def check_fields(body: dict, fields: dict[str, str]) -> None:
    """Refuse a field the format cannot carry. `fields` maps each known field to "mapped",
    "dropped" (documented in docs/api.md) or "refused"; a field not listed is refused too, so
    nothing a client sends is silently lost."""
    for name, value in body.items():
        # An unset value (null, false, {}, []) carries nothing: there is nothing to lose.
        if fields.get(name, "refused") == "refused" and value not in (None, False) and value != {} \
                and value != []:
            raise Untranslatable(f"the field '{name}'")


def function_tools(body: dict) -> list[tuple[str, str, dict]]:
    """(name, description, JSON schema of the arguments) of each function tool offered."""
    tools = body.get("tools")
    if not tools:
        return []
    if not isinstance(tools, list):
        raise Untranslatable("'tools' that is not a list")
    out = []
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        fn = tool.get("function") if kind == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise Untranslatable(f"tools of type '{kind}'" if kind != "function" else "a function tool without a name")
        params = fn.get("parameters")
        out.append((fn["name"], str(fn.get("description") or ""),
                    params if isinstance(params, dict) else {"type": "object", "properties": {}}))
    return out


def tool_choice(body: dict) -> str | tuple[str, str] | None:
    """None (not given), "auto", "none", "required", or ("function", name)."""
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str):
            return ("function", name)
    raise Untranslatable(f"tool_choice {orjson.dumps(choice).decode()}")


def answer_schema(body: dict) -> dict | None:
    """The JSON schema a `response_format` asks the answer to follow (json_object: any object);
    None for plain text."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return schema if isinstance(schema, dict) else {"type": "object"}
    raise Untranslatable(f"response_format of type '{kind}'")


def arguments(text) -> dict:
    """The arguments of an assistant's tool call (a JSON string) as an object."""
    if isinstance(text, dict):
        return text
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        raise Untranslatable("tool call arguments that are not JSON") from None
    if not isinstance(value, dict):
        raise Untranslatable("tool call arguments that are not a JSON object")
    return value


def tool_call(call_id: str, name: str, args) -> dict:
    text = args if isinstance(args, str) else orjson.dumps(args).decode()
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def tool_names(messages) -> dict[str, str]:
    """tool_call_id -> function name, from the assistant messages (formats that name results)."""
    out = {}
    for message in messages or ():
        for call in (message.get("tool_calls") or ()) if isinstance(message, dict) else ():
            if isinstance(call, dict):
                out[str(call.get("id"))] = str((call.get("function") or {}).get("name") or "")
    return out


def completion(answer_id: str, model: str, choices: list[dict], usage: dict) -> dict:
    return {"id": answer_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage}


def choice(index: int, text: str, calls: list[dict], finish: str | None) -> dict:
    message = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def usage(prompt: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


class ChunkWriter:
    """OpenAI `chat.completion.chunk` SSE events for a translated stream: text, tool calls with
    their argument deltas, the finish, the usage chunk (when asked) and `[DONE]`."""

    def __init__(self, model: str, include_usage: bool, answer_id: str = "chatcmpl-edgerules"):
        self.model = model
        self.include_usage = include_usage
        self.id = answer_id
        self.created = int(time.time())
        self.started: set[int] = set()
        self.calls: dict[int, int] = {}   # choice -> tool calls started in it

    def _head(self) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}

    def chunk(self, delta: dict, finish: str | None = None, index: int = 0) -> bytes:
        if index not in self.started:
            self.started.add(index)
            delta = {"role": "assistant", **({"content": ""} if not delta else {}), **delta}
        out = {**self._head(), "choices": [{"index": index, "delta": delta, "logprobs": None,
                                            "finish_reason": finish}]}
        if self.include_usage:
            out["usage"] = None
        return b"data: " + orjson.dumps(out) + b"\n\n"

    def text(self, text: str, index: int = 0) -> bytes:
        return self.chunk({"content": text}, None, index)

    def call_start(self, call_id: str, name: str, args: str = "", index: int = 0) -> tuple[int, bytes]:
        """A new tool call: (its position among the choice's calls, its first chunk)."""
        k = self.calls.get(index, 0)
        self.calls[index] = k + 1
        delta = {"tool_calls": [{"index": k, "id": call_id, "type": "function",
                                 "function": {"name": name, "arguments": args}}]}
        return k, self.chunk(delta, None, index)

    def call_args(self, k: int, args: str, index: int = 0) -> bytes:
        return self.chunk({"tool_calls": [{"index": k, "function": {"arguments": args}}]}, None, index)

    def finish(self, reason: str, index: int = 0) -> bytes:
        return self.chunk({}, reason, index)

    def end(self, usage_block: dict) -> list[bytes]:
        if self.include_usage:
            last = {**self._head(), "choices": [], "usage": usage_block}
            return [b"data: " + orjson.dumps(last) + b"\n\n", DONE]
        return [DONE]


def wants_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))
