"""The Anthropic Messages API behind the OpenAI chat shape: requests translated, answers and events back."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import aiohttp
import orjson

from ...lang.spec import ProviderSpec
from .base import DONE, HttpProvider, ProviderError, UpstreamResponse, UpstreamStream
from .echo import message_text

DEFAULT_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096   # Anthropic requires max_tokens; OpenAI clients usually omit it
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}


class Untranslatable(ValueError):
    """A request feature with no Anthropic counterpart here; the text names the feature."""


class StreamFailure(ValueError):
    """An `error` event in an Anthropic stream; the text is the upstream's message."""


def to_messages_request(body: dict, model: str, stream: bool = False) -> dict:
    """An OpenAI chat body as an Anthropic Messages body."""
    if body.get("tools") or body.get("functions"):
        raise Untranslatable("tool calls")
    system, messages = [], []
    for message in body.get("messages") or ():
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append(message_text(message.get("content")))
        elif role in ("user", "assistant"):
            if message.get("tool_calls"):
                raise Untranslatable("tool calls")
            messages.append({"role": role, "content": _content(message.get("content"))})
        else:
            raise Untranslatable(f"messages with role '{role}'")
    out = {"model": model, "messages": messages,
           "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = "\n\n".join(system)
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if stream:
        out["stream"] = True
    return out


def _content(content) -> str | list[dict]:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise Untranslatable("message content that is neither a string nor a list of parts")
    return [_part(part) for part in content]


def _part(part) -> dict:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        return {"type": "text", "text": part.get("text", "")}
    if kind == "image_url":
        ref = part.get("image_url")
        url = ref.get("url", "") if isinstance(ref, dict) else str(ref or "")
        if url.startswith("data:") and ";base64," in url:
            media_type, data = url[5:].split(";base64,", 1)
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise Untranslatable(f"content parts of type '{kind}'")


def to_openai_usage(usage: dict) -> dict:
    # Anthropic counts cached prompt tokens apart; OpenAI's prompt_tokens includes them.
    cached = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0) + cached
    completion = usage.get("output_tokens") or 0
    out = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def _finish(stop_reason: str | None) -> str | None:
    return FINISH_REASONS.get(stop_reason, "stop") if stop_reason else None


def to_chat_completion(message: dict, model: str) -> dict:
    """An Anthropic message as an OpenAI `chat.completion`."""
    blocks = message.get("content") or ()
    text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
    return {
        "id": message.get("id") or "chatcmpl-anthropic",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model") or model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": _finish(message.get("stop_reason"))}],
        "usage": to_openai_usage(message.get("usage") or {}),
    }


class StreamTranslator:
    """Anthropic stream events in, OpenAI `chat.completion.chunk` SSE events out."""

    def __init__(self, model: str, include_usage: bool = False):
        self.model = model
        self.include_usage = include_usage
        self.id = "chatcmpl-anthropic"
        self.created = int(time.time())
        self.usage: dict = {}
        self.finished = False   # a message_delta with the stop reason came
        self.done = False

    def feed(self, event: dict) -> list[bytes]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = message.get("id") or self.id
            self.model = message.get("model") or self.model
            self.usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind in ("content_block_start", "content_block_delta"):
            part = event.get("content_block") or event.get("delta") or {}
            text = part.get("text") if part.get("type") in ("text", "text_delta") else None
            return [self._chunk({"content": text})] if text else []
        if kind == "message_delta":
            self.usage.update(event.get("usage") or {})   # cumulative counts: the latest wins
            reason = (event.get("delta") or {}).get("stop_reason")
            self.finished = True
            return [self._chunk({}, _finish(reason) or "stop")]
        if kind == "message_stop":
            if not self.finished:
                raise StreamFailure("message_stop came before any stop_reason: the answer is incomplete")
            self.done = True
            if self.include_usage:
                usage = {**self._head(), "choices": [], "usage": to_openai_usage(self.usage)}
                return [b"data: " + orjson.dumps(usage) + b"\n\n", DONE]
            return [DONE]
        if kind == "error":
            error = event.get("error") or {}
            raise StreamFailure(str(error.get("message") or error.get("type") or "error event"))
        return []   # ping, content_block_stop, and event types added later

    def _head(self) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model}

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> bytes:
        chunk = {**self._head(), "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish_reason}]}
        if self.include_usage:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"


class AnthropicProvider(HttpProvider):
    def __init__(self, spec: ProviderSpec):
        headers = {"anthropic-version": API_VERSION}
        if spec.api_key:
            headers["x-api-key"] = spec.api_key
        super().__init__(spec, spec.url or DEFAULT_URL, headers)

    def _translate(self, body: dict, model: str, stream: bool) -> dict:
        try:
            return to_messages_request(body, model, stream)
        except Untranslatable as exc:
            raise self.error(400, f"provider '{self.spec.name}' (anthropic format) does not translate {exc}",
                             kind="unsupported") from None

    async def chat(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        raw = await self.post("/messages", self._translate(body, model, False), timeout)
        result = to_chat_completion(self.parse_answer(raw), model)
        return UpstreamResponse(200, orjson.dumps(result), result)

    async def chat_stream(self, body: dict, model: str, timeout: float) -> UpstreamStream:
        payload = self._translate(body, model, True)
        options = body.get("stream_options")
        translator = StreamTranslator(model, isinstance(options, dict) and bool(options.get("include_usage")))
        resp = await self.post("/messages", payload, timeout, stream=True)
        if resp.content_type == "application/json":
            resp.close()
            raise self.error(502, f"upstream '{self.spec.name}' answered a stream request with JSON "
                                  f"instead of events", upstream_status=resp.status)
        return UpstreamStream(self._events(resp, timeout, translator), resp.close)

    async def embeddings(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        raise self.error(400, f"provider '{self.spec.name}' (anthropic format) does not serve embeddings",
                         kind="unsupported")

    async def _events(self, resp: aiohttp.ClientResponse, timeout: float,
                      translator: StreamTranslator) -> AsyncIterator[bytes]:
        try:
            # aclosing: when this generator stops early, the reader below releases the connection now.
            async with aclosing(self.sse_data(resp, timeout)) as events:
                async for data in events:
                    if translator.done:
                        continue   # drained so the connection goes back to the pool
                    try:
                        out = translator.feed(orjson.loads(data))
                    except orjson.JSONDecodeError:
                        raise self.error(502, f"upstream '{self.spec.name}' sent an event that is not JSON",
                                         kind="stream") from None
                    except StreamFailure as exc:
                        raise self.error(502, f"upstream '{self.spec.name}' failed mid-stream: {exc}",
                                         kind="stream") from None
                    for event in out:
                        yield event
        except ProviderError:
            if not translator.done:
                raise
            return   # the client already has a whole answer
        if not translator.done:
            raise self.error(502, f"upstream '{self.spec.name}' ended the stream before message_stop: "
                                  f"the answer is incomplete",
                             kind="stream")
