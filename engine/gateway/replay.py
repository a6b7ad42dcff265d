"""Between the two shapes of a chat answer: stream events assembled into one chat.completion, and a
chat.completion replayed as stream events."""
from __future__ import annotations

import orjson

DONE = b"data: [DONE]\n\n"
_HEAD = ("id", "created", "model", "system_fingerprint", "service_tier")


class StreamAssembler:
    """A stream tap that builds the whole answer from the chunks it sees; `inner` gets each event next."""

    __slots__ = ("head", "choices", "usage", "done", "broken", "inner")

    def __init__(self, inner=None):
        self.head: dict = {}
        self.choices: dict[int, dict] = {}
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
        for choice in chunk.get("choices") or ():
            self._add_choice(choice)

    def _add_choice(self, choice: dict) -> None:
        index = choice.get("index", 0)
        into = self.choices.setdefault(index, {"index": index, "message": {"role": "assistant", "content": None},
                                                "logprobs": None, "finish_reason": None})
        message = into["message"]
        delta = choice.get("delta") or {}
        for field in ("content", "refusal", "reasoning_content"):
            if isinstance(delta.get(field), str):
                message[field] = (message.get(field) or "") + delta[field]
        if isinstance(delta.get("role"), str):
            message["role"] = delta["role"]
        for call in delta.get("tool_calls") or ():
            calls = message.setdefault("tool_calls", [])
            at = call.get("index", len(calls))
            while len(calls) <= at:
                calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            into_call = calls[at]
            if call.get("id"):
                into_call["id"] = call["id"]
            if call.get("type"):
                into_call["type"] = call["type"]
            function = call.get("function") or {}
            for field in ("name", "arguments"):
                if isinstance(function.get(field), str):
                    into_call["function"][field] += function[field]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            into_logprobs = into["logprobs"] or {"content": []}
            into_logprobs["content"] = (into_logprobs.get("content") or []) + (logprobs.get("content") or [])
            into["logprobs"] = into_logprobs
        if choice.get("finish_reason"):
            into["finish_reason"] = choice["finish_reason"]

    @property
    def complete(self) -> bool:
        """Ended with [DONE], every choice finished, nothing unreadable on the way."""
        return (self.done and not self.broken and bool(self.choices)
                and all(c["finish_reason"] for c in self.choices.values()))

    def completion(self) -> dict:
        out = {"id": self.head.get("id", ""), "object": "chat.completion", "created": self.head.get("created", 0),
               "model": self.head.get("model", "")}
        for name in ("system_fingerprint", "service_tier"):
            if name in self.head:
                out[name] = self.head[name]
        out["choices"] = [self.choices[i] for i in sorted(self.choices)]
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
