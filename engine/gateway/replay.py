"""Between the two shapes of a chat answer: stream events assembled into one chat.completion, and a
chat.completion replayed as stream events."""
from __future__ import annotations

import orjson

DONE = b"data: [DONE]\n\n"
_HEAD = ("id", "created", "model", "system_fingerprint", "service_tier")
_TEXT_FIELDS = ("content", "refusal", "reasoning_content")


class _Choice:
    """One choice being assembled: text kept as lists of pieces and joined once at the end, so
    assembling is linear in the stream (appending to a growing string is quadratic)."""

    __slots__ = ("role", "text", "tool_calls", "logprobs", "finish_reason")

    def __init__(self):
        self.role = "assistant"
        self.text: dict[str, list[str]] = {}
        self.tool_calls: list[dict] = []
        self.logprobs: list | None = None
        self.finish_reason = None

    def add_tool_call(self, call: dict) -> None:
        calls = self.tool_calls
        at = call.get("index", len(calls))
        if not isinstance(at, int) or at < 0 or at > len(calls) + 1024:
            at = len(calls)   # an index far ahead would make a list as long as the index says
        while len(calls) <= at:
            calls.append({"id": None, "type": "function", "name": [], "arguments": []})
        into = calls[at]
        if call.get("id"):
            into["id"] = call["id"]
        if call.get("type"):
            into["type"] = call["type"]
        function = call.get("function") or {}
        for name in ("name", "arguments"):
            if isinstance(function.get(name), str):
                into[name].append(function[name])

    def to_dict(self, index: int) -> dict:
        message = {"role": self.role, "content": None}
        for name, pieces in self.text.items():
            message[name] = "".join(pieces)
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": c["type"],
                 "function": {"name": "".join(c["name"]), "arguments": "".join(c["arguments"])}}
                for c in self.tool_calls]
        logprobs = {"content": self.logprobs} if self.logprobs is not None else None
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": self.finish_reason}


class StreamAssembler:
    """A stream tap that builds the whole answer from the chunks it sees; `inner` gets each event next."""

    __slots__ = ("head", "choices", "usage", "done", "broken", "inner")

    def __init__(self, inner=None):
        self.head: dict = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: dict | None = None
        self.done = False
        self.broken = False
        self.inner = inner

    def __call__(self, event: bytes) -> bytes:
        if not self.broken:
            self.add(event)
        return self.inner(event) if self.inner is not None else event

    def add(self, event: bytes) -> None:
        if event == DONE:
            self.done = True
            return
        try:
            chunk = orjson.loads(event[6:]) if event.startswith(b"data: ") else None
        except orjson.JSONDecodeError:
            chunk = None
        if not isinstance(chunk, dict) or "error" in chunk or self.done:
            self.broken = True      # not an answer this assembler understands: it is never stored
            return
        for name in _HEAD:
            if name in chunk and name not in self.head:
                self.head[name] = chunk[name]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        try:
            for choice in chunk.get("choices") or ():
                self._add_choice(choice)
        except (TypeError, AttributeError, ValueError):
            self.broken = True      # a chunk of an unexpected shape: relayed, never stored

    def _add_choice(self, choice: dict) -> None:
        index = choice.get("index", 0)
        into = self.choices.get(index)
        if into is None:
            into = self.choices[index] = _Choice()
        delta = choice.get("delta") or {}
        for name in _TEXT_FIELDS:
            if isinstance(delta.get(name), str):
                into.text.setdefault(name, []).append(delta[name])
        if isinstance(delta.get("role"), str):
            into.role = delta["role"]
        for call in delta.get("tool_calls") or ():
            into.add_tool_call(call)
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            into.logprobs = into.logprobs or []
            into.logprobs.extend(logprobs.get("content") or ())
        if choice.get("finish_reason"):
            into.finish_reason = choice["finish_reason"]

    @property
    def complete(self) -> bool:
        """Ended with [DONE], every choice finished, nothing unreadable on the way."""
        return (self.done and not self.broken and bool(self.choices)
                and all(c.finish_reason for c in self.choices.values()))

    def completion(self) -> dict:
        out = {"id": self.head.get("id", ""), "object": "chat.completion", "created": self.head.get("created", 0),
               "model": self.head.get("model", "")}
        for name in ("system_fingerprint", "service_tier"):
            if name in self.head:
                out[name] = self.head[name]
        out["choices"] = [self.choices[i].to_dict(i) for i in sorted(self.choices)]
        if self.usage is not None:
            out["usage"] = self.usage
        return out


def stream_events(completion: dict, with_usage: bool) -> list[bytes]:
    """A chat.completion as the SSE events of a stream: per choice its message, then its finish."""
    head = {"id": completion.get("id", ""), "object": "chat.completion.chunk",
            "created": completion.get("created", 0), "model": completion.get("model", "")}
    if "system_fingerprint" in completion:
        head["system_fingerprint"] = completion["system_fingerprint"]
    tail = {"usage": None} if with_usage else {}
    events = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        delta = {"role": message.get("role", "assistant"), "content": message.get("content")}
        for field in ("refusal", "reasoning_content"):
            if message.get(field) is not None:
                delta[field] = message[field]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        index = choice.get("index", 0)
        events.append({**head, "choices": [{"index": index, "delta": delta,
                                            "logprobs": choice.get("logprobs"), "finish_reason": None}], **tail})
        events.append({**head, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                            "finish_reason": choice.get("finish_reason") or "stop"}], **tail})
    if with_usage and isinstance(completion.get("usage"), dict):
        events.append({**head, "choices": [], "usage": completion["usage"]})
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in events] + [DONE]
