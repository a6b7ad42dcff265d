"""POST /v1/messages: Anthropic's Messages API in, passed through to anthropic-format providers
and translated to and from chat completions for the others."""
from __future__ import annotations

import orjson

from .common import ChatStreamTranslator, Ingress, arguments_object, bad, chat_usage, check_types, \
    require_model, sse, text_of

# Fields a chat completion carries; any other top-level field is refused by name when translated.
_CARRIED = frozenset({"model", "messages", "system", "max_tokens", "temperature", "top_p", "stop_sequences",
                      "stream", "metadata", "tools", "tool_choice",
                      "service_tier"})   # a hint about the provider's service: dropped (docs/api.md)
_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
         "content_filter": "refusal"}
# Hints with no meaning to another provider; dropped when translated (docs/api.md says so).
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
_TYPES = {"system": (str, list), "max_tokens": (int,), "temperature": (int, float), "top_p": (int, float),
          "stop_sequences": (list,), "stream": (bool,), "metadata": (dict,), "tools": (list,),
          "tool_choice": (dict,)}


class MessagesIngress(Ingress):
    path = "/messages"
    native = frozenset({"anthropic"})
    named_events = True
    delta_shape = "messages"
    final_events = frozenset({b"message_stop"})

    def credential(self, headers: dict) -> str | None:
        if headers.get("authorization"):
            return headers["authorization"]
        key = headers.get("x-api-key")
        return f"Bearer {key}" if key else None

    def validate(self, body: dict) -> None:
        require_model(body)
        if body.get("max_tokens") is None:
            raise bad("'max_tokens' is required", "max_tokens", "missing_required_parameter")
        check_types(body, _TYPES)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad("'messages' must be a non-empty array", "messages")
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise bad(f"'{where}' must be an object whose role is \"user\" or \"assistant\"", where)
            content = message.get("content")
            if isinstance(content, str):
                continue
            if not isinstance(content, list):
                raise bad(f"'{where}.content' must be a string or an array of blocks", f"{where}.content")
            for j, block in enumerate(content):
                _validate_block(block, f"{where}.content[{j}]")
        for k, tool in enumerate(body.get("tools") or ()):
            if not isinstance(tool, dict) or not isinstance(tool.get("name", ""), str):
                raise bad(f"'tools[{k}]' must be an object with a string 'name'", f"tools[{k}]")

    def to_chat(self, body: dict) -> tuple[dict, list[str], str | None]:
        refused = [f"'{name}'" for name in body if name not in _CARRIED]
        messages = []
        system = body.get("system")
        if system:
            messages.append({"role": "system", "content": text_of(system)})
        for i, message in enumerate(body["messages"]):
            _add_message(messages, message, f"messages[{i}]", refused)
        chat = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
        for name in ("temperature", "top_p"):
            if body.get(name) is not None:
                chat[name] = body[name]
        if body.get("stop_sequences"):
            chat["stop"] = body["stop_sequences"]
        metadata = body.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
            chat["user"] = metadata["user_id"]
        if body.get("stream") is True:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}   # message_delta carries the usage
        if body.get("tools"):
            chat["tools"] = [_tool(t, f"tools[{k}]", refused) for k, t in enumerate(body["tools"])]
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            _tool_choice(choice, chat, refused)
        return chat, refused, None

    def from_chat(self, answer: dict, raw: dict, model: str) -> dict:
        choice = (answer.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        content = []
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        for tool_call in message.get("tool_calls") or ():
            function = tool_call.get("function") or {}
            content.append({"type": "tool_use", "id": tool_call.get("id") or "", "name": function.get("name"),
                            "input": arguments_object(function.get("arguments"))})
        prompt, completion, cached = chat_usage(answer.get("usage"))
        return {"id": _message_id(answer.get("id")), "type": "message", "role": "assistant",
                "model": answer.get("model") or model, "content": content,
                "stop_reason": _STOP.get(choice.get("finish_reason"), "end_turn"), "stop_sequence": None,
                "usage": _usage(prompt, completion, cached)}

    def stream_translator(self, raw: dict, model: str, call) -> ChatStreamTranslator:
        return MessagesStream(model, call)


# What each block type needs, so a translation never meets a wrong type: (field, types).
_BLOCK_FIELDS = {"text": (("text", (str,)),), "image": (("source", (dict,)),),
                 "tool_use": (("id", (str,)), ("name", (str,)), ("input", (dict,))),
                 "tool_result": (("tool_use_id", (str,)),)}


def _validate_block(block, where: str) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise bad(f"'{where}' must be an object with a string 'type'", where)
    for name, kinds in _BLOCK_FIELDS.get(block["type"], ()):
        if not isinstance(block.get(name), kinds):
            raise bad(f"'{where}.{name}' must be {'an object' if kinds == (dict,) else 'a string'}",
                      f"{where}.{name}")
    if block["type"] == "tool_result" and not isinstance(block.get("content", ""), (str, list)):
        raise bad(f"'{where}.content' must be a string or an array of blocks", f"{where}.content")


def _add_message(messages: list, message: dict, where: str, refused: list[str]) -> None:
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        messages.append({"role": role, "content": content})
        return
    texts, parts, calls = [], [], []
    for j, block in enumerate(content):
        kind = block["type"]
        if kind == "text":
            texts.append(block.get("text") or "")
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif kind == "image" and role == "user":
            parts.append(_image(block, f"{where}.content[{j}]", refused))
        elif kind == "tool_use" and role == "assistant":
            calls.append({"id": block.get("id") or "", "type": "function",
                          "function": {"name": block.get("name") or "",
                                       "arguments": orjson.dumps(block.get("input") or {}).decode()}})
        elif kind == "tool_result" and role == "user":
            # Chat wants each result as its own `tool` message, right after the assistant's calls.
            result = block.get("content")
            if isinstance(result, list) and any(b.get("type") != "text" for b in result if isinstance(b, dict)):
                refused.append(f"'{where}.content[{j}]' (a tool_result with non-text content)")
            messages.append({"role": "tool", "tool_call_id": block.get("tool_use_id") or "",
                             "content": text_of(result)})
        elif kind not in _DROPPED_BLOCKS:
            refused.append(f"'{where}.content[{j}]' (a '{kind}' block)")
    if role == "assistant":
        out = {"role": "assistant", "content": "".join(texts) or None}
        if calls:
            out["tool_calls"] = calls
        messages.append(out)
    elif parts:
        messages.append({"role": "user", "content": parts})


def _image(block: dict, where: str, refused: list[str]) -> dict:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = source.get("url") or ""
    else:
        refused.append(f"'{where}' (an image from a '{source.get('type')}' source)")
        url = ""
    return {"type": "image_url", "image_url": {"url": url}}


def _tool(tool, where: str, refused: list[str]) -> dict:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom") or "name" not in tool:
        kind = tool.get("type") if isinstance(tool, dict) else None
        refused.append(f"'{where}' (a '{kind}' tool: only client tools with an input_schema translate)")
        return {}
    function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(choice: dict, chat: dict, refused: list[str]) -> None:
    kind = choice.get("type")
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        refused.append(f"'tool_choice' of type '{kind}'")
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


def _message_id(chat_id) -> str:
    return "msg_" + str(chat_id or "edgerules").removeprefix("chatcmpl-")


def _usage(prompt: int, completion: int, cached: int) -> dict:
    # Anthropic counts cached prompt tokens apart from input_tokens.
    return {"input_tokens": prompt - cached, "output_tokens": completion,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


class MessagesStream(ChatStreamTranslator):
    """Chat chunks in; message_start, content_block_start/delta/stop, message_delta, message_stop out."""

    def __init__(self, model: str, call):
        self.model, self.call = model, call
        self.started = False
        self.index = -1            # the open content block, -1 for none
        self.open_kind = ""        # "text" | "tool"
        self.tools: dict[int, int] = {}   # chat tool-call index -> content block index
        self.finish = None
        self.usage: dict | None = None

    def feed(self, chunk: dict) -> list[bytes]:
        out = []
        if not self.started:
            self.started = True
            self.model = chunk.get("model") or self.model
            message = {"id": _message_id(chunk.get("id")), "type": "message", "role": "assistant",
                       "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
                       "usage": {"input_tokens": 0, "output_tokens": 0}}
            out.append(sse("message_start", {"type": "message_start", "message": message}, True))
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
            self.call.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.open_kind != "text":
                    out += self._open({"type": "text", "text": ""}, "text")
                out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for tool_call in delta.get("tool_calls") or ():
                out += self._tool_delta(tool_call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _tool_delta(self, tool_call: dict) -> list[bytes]:
        out = []
        k = tool_call.get("index", 0)
        function = tool_call.get("function") or {}
        if k not in self.tools:
            block = {"type": "tool_use", "id": tool_call.get("id") or f"toolu_{k}",
                     "name": function.get("name") or "", "input": {}}
            out += self._open(block, "tool")
            self.tools[k] = self.index
        if function.get("arguments"):
            if self.tools[k] != self.index:   # interleaved parallel calls: Anthropic has one open block
                return out + [self._delta({"type": "input_json_delta", "partial_json": function["arguments"]},
                                          self.tools[k])]
            out.append(self._delta({"type": "input_json_delta", "partial_json": function["arguments"]}))
        return out

    def _open(self, block: dict, kind: str) -> list[bytes]:
        out = self._close_block()
        self.index += 1
        self.open_kind = kind
        out.append(sse("content_block_start", {"type": "content_block_start", "index": self.index,
                                               "content_block": block}, True))
        return out

    def _close_block(self) -> list[bytes]:
        if not self.open_kind:
            return []
        self.open_kind = ""
        return [sse("content_block_stop", {"type": "content_block_stop", "index": self.index}, True)]

    def _delta(self, delta: dict, index: int | None = None) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta",
                                           "index": self.index if index is None else index, "delta": delta}, True)

    def close(self) -> list[bytes]:
        out = self._close_block()
        prompt, completion, cached = chat_usage(self.usage)
        out.append(sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": _STOP.get(self.finish, "end_turn"),
                                                   "stop_sequence": None},
                                         "usage": _usage(prompt, completion, cached)}, True))
        out.append(sse("message_stop", {"type": "message_stop"}, True))
        return out

