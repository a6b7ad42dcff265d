"""POST /v1/responses: OpenAI's Responses API in, passed through to openai-format providers and
translated to and from chat completions (stateless use only) for the others."""
from __future__ import annotations

import time

from .common import ChatStreamTranslator, Ingress, bad, chat_usage, check_types, require_model, sse

# Fields a chat completion carries; any other top-level field is refused by name when translated.
_CARRIED = frozenset({"model", "input", "instructions", "tools", "tool_choice", "stream", "text",
                      "max_output_tokens", "temperature", "top_p", "user", "parallel_tool_calls",
                      "metadata", "store", "include", "truncation",
                      # hints about the provider's service, not the answer: dropped (docs/api.md)
                      "prompt_cache_key", "prompt_cache_retention", "safety_identifier", "service_tier",
                      "stream_options"})
_TYPES = {"input": (str, list), "instructions": (str,), "tools": (list,), "tool_choice": (str, dict),
          "stream": (bool,), "text": (dict,), "max_output_tokens": (int,), "temperature": (int, float),
          "top_p": (int, float), "user": (str,), "parallel_tool_calls": (bool,), "metadata": (dict,),
          "store": (bool,), "previous_response_id": (str,)}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


class ResponsesIngress(Ingress):
    path = "/responses"
    native = frozenset({"openai"})
    named_events = True
    delta_shape = "responses"
    final_events = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})
    restated = frozenset({"input"})

    def validate(self, body: dict) -> None:
        require_model(body)
        check_types(body, _TYPES)
        if body.get("input") is None:
            raise bad("'input' is required", "input", "missing_required_parameter")
        if isinstance(body["input"], list):
            for i, item in enumerate(body["input"]):
                _validate_item(item, f"input[{i}]")
        for k, tool in enumerate(body.get("tools") or ()):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise bad(f"'tools[{k}]' must be an object with a string 'type'", f"tools[{k}]")

    def to_chat(self, body: dict) -> tuple[dict, list[str], str | None]:
        native_only = _stateful(body)
        refused = [f"'{name}'" for name in body if name not in _CARRIED and name != "previous_response_id"]
        if body.get("truncation") not in (None, "disabled"):
            refused.append("'truncation'")
        messages = []
        if body.get("instructions"):
            messages.append({"role": "system", "content": body["instructions"]})
        inp = body["input"]
        if isinstance(inp, str):
            messages.append({"role": "user", "content": inp})
        else:
            for i, item in enumerate(inp):
                _add_item(messages, item, f"input[{i}]", refused)
        chat = {"model": body["model"], "messages": messages}
        if body.get("max_output_tokens") is not None:
            chat["max_tokens"] = body["max_output_tokens"]
        for name in ("temperature", "top_p", "user", "parallel_tool_calls"):
            if body.get(name) is not None:
                chat[name] = body[name]
        if body.get("stream") is True:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}   # response.completed carries the usage
        if body.get("tools"):
            chat["tools"] = [_tool(t, f"tools[{k}]", refused) for k, t in enumerate(body["tools"])]
        if body.get("tool_choice") is not None:
            _tool_choice(body["tool_choice"], chat, refused)
        fmt = (body.get("text") or {}).get("format")
        if isinstance(fmt, dict):
            _text_format(fmt, chat, refused)
        if set(body.get("text") or ()) - {"format"}:
            refused.append("'text' fields other than 'format'")
        return chat, refused, native_only

    def from_chat(self, answer: dict, raw: dict, model: str) -> dict:
        choice = (answer.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        rid = _response_id(answer.get("id"))
        output = []
        if message.get("content"):
            output.append(_message_item(rid, message["content"], "completed"))
        for tool_call in message.get("tool_calls") or ():
            function = tool_call.get("function") or {}
            output.append(_call_item(tool_call.get("id") or "", function.get("name") or "",
                                     function.get("arguments") or "", "completed"))
        return response_object(raw, rid, answer.get("model") or model, output, choice.get("finish_reason"),
                               answer.get("usage"))

    def stream_translator(self, raw: dict, model: str, call) -> ChatStreamTranslator:
        return ResponsesStream(raw, model, call)


# The string fields each input item type needs, so a translation never meets a wrong type.
_ITEM_STRINGS = {"function_call": ("call_id", "name", "arguments"), "function_call_output": ("call_id",)}


def _validate_item(item, where: str) -> None:
    if not isinstance(item, dict):
        raise bad(f"'{where}' must be an object", where)
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise bad(f"'{where}.type' must be a string", f"{where}.type")
    for name in _ITEM_STRINGS.get(kind, ()):
        if not isinstance(item.get(name), str):
            raise bad(f"'{where}.{name}' must be a string", f"{where}.{name}")
    if kind == "message":
        if not isinstance(item.get("role"), str):
            raise bad(f"'{where}.role' must be a string", f"{where}.role")
        content = item.get("content")
        if not isinstance(content, (str, list)) or isinstance(content, list) and not all(
                isinstance(part, dict) and isinstance(part.get("type"), str) for part in content):
            raise bad(f"'{where}.content' must be a string or an array of typed parts", f"{where}.content")
    if kind == "function_call_output" and not isinstance(item.get("output"), (str, list)):
        raise bad(f"'{where}.output' must be a string or an array", f"{where}.output")


def _stateful(body: dict) -> str | None:
    """Why only a provider that keeps responses can serve this body, or None."""
    if body.get("previous_response_id"):
        return "'previous_response_id' (a conversation the provider stored)"
    if body.get("store") is True:
        return "'store': true (a response the provider keeps)"
    for name in ("conversation", "background", "prompt"):
        if body.get(name):
            return f"'{name}'"
    return None


def _add_item(messages: list, item: dict, where: str, refused: list[str]) -> None:
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        role = "system" if role == "developer" else role
        content = item.get("content")
        if role not in ("user", "assistant", "system"):
            refused.append(f"'{where}' (a message with role '{item.get('role')}')")
        elif isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif isinstance(content, list):
            messages.append({"role": role, "content": _parts(content, where, refused)})
        else:
            refused.append(f"'{where}.content'")
    elif kind == "function_call":
        call = {"id": item.get("call_id") or "", "type": "function",
                "function": {"name": item.get("name") or "", "arguments": item.get("arguments") or ""}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            # The text before the calls and parallel calls: one assistant turn, as chat has it.
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
        messages.append({"role": "tool", "tool_call_id": item.get("call_id") or "", "content": output or ""})
    elif kind != "reasoning":   # reasoning items are the provider's own; dropped (docs/api.md)
        refused.append(f"'{where}' (an item of type '{kind}')")


def _parts(content: list, where: str, refused: list[str]) -> list[dict]:
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            refused.append(f"'{where}.content[{j}]' (a '{kind}' part)")
    return parts


def _tool(tool, where: str, refused: list[str]) -> dict:
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("name"), str):
        kind = tool.get("type") if isinstance(tool, dict) else None
        refused.append(f"'{where}' (a '{kind}' tool: only function tools translate)")
        return {}
    function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object"}}
    for name in ("description", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _tool_choice(choice, chat: dict, refused: list[str]) -> None:
    if choice in ("auto", "none", "required"):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        refused.append("'tool_choice'")


def _text_format(fmt: dict, chat: dict, refused: list[str]) -> None:
    kind = fmt.get("type")
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind != "text":
        refused.append(f"'text.format' of type '{kind}'")


# ---- the Response object and its items ---------------------------------------------------------

def _response_id(chat_id) -> str:
    return "resp_" + str(chat_id or "edgerules").removeprefix("chatcmpl-")


def _message_item(rid: str, text: str, status: str) -> dict:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status else []
    return {"id": "msg_" + rid[5:], "type": "message", "status": status or "in_progress", "role": "assistant",
            "content": content}


def _call_item(call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"id": "fc_" + call_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def response_object(raw: dict, rid: str, model: str, output: list, finish, usage: dict | None,
                    status: str | None = None) -> dict:
    """A Response as OpenAI shapes it, echoing the request's settings."""
    reason = _INCOMPLETE.get(finish)
    if status is None:
        status = "incomplete" if reason else "completed"
    out = {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
           "error": None, "incomplete_details": {"reason": reason} if reason and status != "in_progress" else None,
           "instructions": raw.get("instructions"), "max_output_tokens": raw.get("max_output_tokens"),
           "model": model, "output": output, "parallel_tool_calls": raw.get("parallel_tool_calls", True),
           "previous_response_id": None, "store": False, "temperature": raw.get("temperature"),
           "text": raw.get("text") or {"format": {"type": "text"}}, "tool_choice": raw.get("tool_choice", "auto"),
           "tools": raw.get("tools") or [], "top_p": raw.get("top_p"), "truncation": "disabled",
           "user": raw.get("user"), "metadata": raw.get("metadata") or {}, "usage": None}
    if usage is not None:
        prompt, completion, cached = chat_usage(usage)
        out["usage"] = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
                        "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": prompt + completion}
    return out


class ResponsesStream(ChatStreamTranslator):
    """Chat chunks in; the Responses event stream out: response.created, output items with their
    text and argument deltas, then response.completed (or response.incomplete)."""

    def __init__(self, raw: dict, model: str, call):
        self.raw, self.model, self.call = raw, model, call
        self.rid = "resp_edgerules"
        self.seq = 0
        self.started = False
        self.items: list[dict] = []       # output items in order, as they will be when done
        self.text_at = -1                 # output index of the open message item
        self.tools: dict[int, int] = {}   # chat tool-call index -> output index
        self.finish = None
        self.usage: dict | None = None

    def _event(self, kind: str, **fields) -> bytes:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse(kind, event, True)

    def feed(self, chunk: dict) -> list[bytes]:
        out = []
        if not self.started:
            self.started = True
            self.rid = _response_id(chunk.get("id"))
            self.model = chunk.get("model") or self.model
            head = response_object(self.raw, self.rid, self.model, [], None, None, "in_progress")
            out += [self._event("response.created", response=head),
                    self._event("response.in_progress", response=head)]
        if isinstance(chunk.get("usage"), dict):
            self.usage = self.call.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(delta["content"])
            for tool_call in delta.get("tool_calls") or ():
                out += self._tool(tool_call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def _text(self, piece: str) -> list[bytes]:
        out = []
        if self.text_at < 0:
            self.text_at = len(self.items)
            item = _message_item(self.rid, "", "")
            self.items.append(item)
            out.append(self._event("response.output_item.added", output_index=self.text_at, item=item))
            out.append(self._event("response.content_part.added", item_id=item["id"], output_index=self.text_at,
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
            item["text"] = ""
        item = self.items[self.text_at]
        item["text"] += piece
        out.append(self._event("response.output_text.delta", item_id=item["id"], output_index=self.text_at,
                               content_index=0, delta=piece, logprobs=[]))
        return out

    def _tool(self, tool_call: dict) -> list[bytes]:
        out = []
        k = tool_call.get("index", 0)
        function = tool_call.get("function") or {}
        if k not in self.tools:
            self.tools[k] = len(self.items)
            item = _call_item(tool_call.get("id") or f"call_{k}", function.get("name") or "", "", "in_progress")
            self.items.append(item)
            out.append(self._event("response.output_item.added", output_index=self.tools[k], item=dict(item)))
        at = self.tools[k]
        item = self.items[at]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=at, delta=function["arguments"]))
        return out

    def close(self) -> list[bytes]:
        out, done = [], []
        for at, item in enumerate(self.items):
            if item["type"] == "message":
                text = item.pop("text")
                part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                out.append(self._event("response.output_text.done", item_id=item["id"], output_index=at,
                                       content_index=0, text=text, logprobs=[]))
                out.append(self._event("response.content_part.done", item_id=item["id"], output_index=at,
                                       content_index=0, part=part))
                item = {**item, "status": "completed", "content": [part]}
            else:
                out.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                       output_index=at, name=item["name"], arguments=item["arguments"]))
                item = {**item, "status": "completed"}
            out.append(self._event("response.output_item.done", output_index=at, item=item))
            done.append(item)
        final = response_object(self.raw, self.rid, self.model, done, self.finish, self.usage)
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response=final))
        return out
