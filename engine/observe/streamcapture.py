"""Under `log full`, the answer of a streamed /v1/responses, /v1/messages or /v1/completions
request, built from the events the client was sent, in that API's own shape (a chat stream is
assembled by edgerules.gateway.replay.StreamAssembler). Each is a stream tap: it looks at an
event and hands it on unchanged. What it keeps is bounded by the answer, which is bounded by
EDGERULES_MAX_UPSTREAM_BODY."""
from __future__ import annotations

import orjson


def event_data(event: bytes) -> dict | None:
    """The JSON object of an SSE event's `data:` line; None for [DONE], comments, other shapes."""
    for line in event.split(b"\n"):
        if line.startswith(b"data: ") or line.startswith(b"data:"):
            try:
                data = orjson.loads(line[5:].strip())
            except orjson.JSONDecodeError:
                return None
            return data if isinstance(data, dict) else None
    return None


class _Capture:
    __slots__ = ("inner",)

    def __init__(self, inner=None):
        self.inner = inner

    def __call__(self, event: bytes) -> bytes:
        data = event_data(event)
        if data is not None:
            try:
                self.add(data)
            except (TypeError, AttributeError, ValueError, KeyError):
                pass     # an event of an unexpected shape: relayed; the kept answer is partial
        return self.inner(event) if self.inner is not None else event

    def add(self, data: dict) -> None:
        raise NotImplementedError

    def completion(self) -> dict:
        raise NotImplementedError


class ResponsesCapture(_Capture):
    """The Response object that the stream's last event (completed, incomplete or failed) carries whole;
    until then the text of the output seen so far."""

    __slots__ = ("response", "text")

    def __init__(self, inner=None):
        super().__init__(inner)
        self.response: dict | None = None
        self.text: list[str] = []

    def add(self, data: dict) -> None:
        kind = data.get("type")
        if kind in ("response.completed", "response.incomplete", "response.failed", "response.created") \
                and isinstance(data.get("response"), dict):
            self.response = data["response"]
        elif kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
            self.text.append(data["delta"])

    def completion(self) -> dict:
        if self.response is not None and self.response.get("status") != "in_progress":
            return self.response
        return {**(self.response or {"object": "response"}), "status": "incomplete",
                "output_text": "".join(self.text)}


class MessagesCapture(_Capture):
    """An Anthropic Message built from message_start, the content blocks' deltas and message_delta."""

    __slots__ = ("message", "blocks", "json_parts")

    def __init__(self, inner=None):
        super().__init__(inner)
        self.message: dict = {"type": "message", "role": "assistant"}
        self.blocks: dict[int, dict] = {}
        self.json_parts: dict[int, list[str]] = {}

    def add(self, data: dict) -> None:
        kind = data.get("type")
        if kind == "message_start" and isinstance(data.get("message"), dict):
            self.message.update({k: v for k, v in data["message"].items() if k != "content"})
        elif kind == "content_block_start" and isinstance(data.get("content_block"), dict):
            self.blocks[int(data["index"])] = dict(data["content_block"])
        elif kind == "content_block_delta" and isinstance(data.get("delta"), dict):
            index, delta = int(data["index"]), data["delta"]
            block = self.blocks.setdefault(index, {"type": "text", "text": ""})
            if delta.get("type") == "text_delta":
                block["text"] = block.get("text", "") + str(delta.get("text", ""))
            elif delta.get("type") == "input_json_delta":
                self.json_parts.setdefault(index, []).append(str(delta.get("partial_json", "")))
            elif delta.get("type") == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
        elif kind == "message_delta":
            if isinstance(data.get("delta"), dict):
                self.message.update(data["delta"])
            if isinstance(data.get("usage"), dict):
                self.message["usage"] = {**(self.message.get("usage") or {}), **data["usage"]}

    def completion(self) -> dict:
        content = []
        for index in sorted(self.blocks):
            block = dict(self.blocks[index])
            if index in self.json_parts:
                text = "".join(self.json_parts[index])
                try:
                    block["input"] = orjson.loads(text) if text else {}
                except orjson.JSONDecodeError:
                    block["input"] = text
            content.append(block)
        return {**self.message, "content": content}


class CompletionsCapture(_Capture):
    """A legacy text completion: each choice's text joined, its finish_reason, the usage."""

    __slots__ = ("head", "choices", "usage")

    def __init__(self, inner=None):
        super().__init__(inner)
        self.head: dict = {}
        self.choices: dict[int, dict] = {}
        self.usage: dict | None = None

    def add(self, data: dict) -> None:
        for name in ("id", "object", "created", "model"):
            if name in data and name not in self.head:
                self.head[name] = data[name]
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        for choice in data.get("choices") or ():
            kept = self.choices.setdefault(int(choice.get("index", 0)), {"text": [], "finish_reason": None})
            if isinstance(choice.get("text"), str):
                kept["text"].append(choice["text"])
            if choice.get("finish_reason") is not None:
                kept["finish_reason"] = choice["finish_reason"]

    def completion(self) -> dict:
        choices = [{"index": i, "text": "".join(c["text"]), "finish_reason": c["finish_reason"]}
                   for i, c in sorted(self.choices.items())]
        return {**self.head, "object": "text_completion", "choices": choices,
                **({"usage": self.usage} if self.usage is not None else {})}


BY_PATH = {"/responses": ResponsesCapture, "/messages": MessagesCapture, "/completions": CompletionsCapture}
