"""The Anthropic Messages API behind the OpenAI chat shape: requests translated, answers and events back."""
from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import aiohttp
import orjson

from ...lang.spec import ProviderSpec
from .base import HttpProvider, ProviderError, UpstreamResponse, UpstreamStream
from .echo import message_text
from .tools import (ANSWER_TOOL, ChunkWriter, StreamFailure, Untranslatable, answer_schema, arguments, feed,
                    check_fields, choice, function_tools, tool_call, tool_choice, wants_usage)

DEFAULT_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096   # Anthropic requires max_tokens; OpenAI clients usually omit it
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}


# How each OpenAI chat field reaches the Messages API (docs/api.md, "Provider formats").
FIELDS = {name: "mapped" for name in (
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "stop", "user", "tools", "tool_choice", "parallel_tool_calls", "response_format", "n")}
FIELDS.update({name: "dropped" for name in (
    "seed", "frequency_penalty", "presence_penalty", "metadata", "store", "service_tier")})


def to_messages_request(body: dict, model: str, stream: bool = False) -> dict:
    """An OpenAI chat body as an Anthropic Messages body."""
    check_fields(body, FIELDS)
    if body.get("n") not in (None, 1):
        raise Untranslatable("n other than 1 (one answer per request)")
    system, messages = [], []
    for message in body.get("messages") or ():
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append(message_text(message.get("content")))
        elif role == "user":
            _append(messages, "user", _content(message.get("content")))
        elif role == "assistant":
            content = _content(message.get("content"))
            calls = message.get("tool_calls")
            if calls:
                blocks = [{"type": "text", "text": content}] if isinstance(content, str) and content else \
                    [b for b in content if b.get("text") != ""] if isinstance(content, list) else []
                blocks += [_tool_use(call) for call in calls]
                content = blocks
            messages.append({"role": "assistant", "content": content})
        elif role == "tool":
            result = {"type": "tool_result", "tool_use_id": str(message.get("tool_call_id") or ""),
                      "content": message_text(message.get("content"))}
            _append(messages, "user", [result])
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
    _tools(body, out)
    if stream:
        out["stream"] = True
    return out


def _append(messages: list, role: str, content) -> None:
    """A user turn; tool results and the user text after them join one turn, as Anthropic wants
    the results of parallel calls together right after the assistant's tool_use blocks."""
    last = messages[-1] if messages else None
    if last is not None and last["role"] == role and isinstance(last["content"], list) and \
            last["content"] and last["content"][-1].get("type") == "tool_result":
        last["content"].extend([{"type": "text", "text": content}] if isinstance(content, str) else content)
    else:
        messages.append({"role": role, "content": content})


def _tool_use(call) -> dict:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise Untranslatable("a tool call without a function name")
    return {"type": "tool_use", "id": str(call.get("id") or ""), "name": fn["name"],
            "input": arguments(fn.get("arguments"))}


def _tools(body: dict, out: dict) -> None:
    tools = function_tools(body)
    choice = tool_choice(body)
    schema = answer_schema(body)
    if schema is not None:
        if tools:
            raise Untranslatable("response_format json_schema together with tools")
        # The usual mapping: one forced tool whose input is the answer; its input comes back as the text.
        out["tools"] = [{"name": ANSWER_TOOL, "description": "Answer with this tool; its input is the answer.",
                         "input_schema": schema if schema.get("type") == "object" else
                         {"type": "object", "properties": {"value": schema}, "required": ["value"]}}]
        out["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
        return
    if not tools:
        if choice not in (None, "none", "auto"):
            raise Untranslatable("tool_choice without tools")
        return
    out["tools"] = [{"name": n, "description": d, "input_schema": p} if d else {"name": n, "input_schema": p}
                    for n, d, p in tools]
    if isinstance(choice, tuple):
        mapped = {"type": "tool", "name": choice[1]}
    else:
        mapped = {"type": {"none": "none", "required": "any"}.get(choice, "auto")}
    if body.get("parallel_tool_calls") is False and mapped["type"] != "none":
        mapped["disable_parallel_tool_use"] = True
    out["tool_choice"] = mapped


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
    if kind in ("tool_use", "tool_result"):
        return part
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


def to_chat_completion(message: dict, model: str, structured: bool = False) -> dict:
    """An Anthropic message as an OpenAI `chat.completion`; with `structured`, the forced answer
    tool's input is the text."""
    text, calls = [], []
    for block in message.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "tool_use" and structured and block.get("name") == ANSWER_TOOL:
            text.append(_structured_text(block.get("input")))
        elif kind == "tool_use":
            calls.append(tool_call(str(block.get("id")), str(block.get("name")), block.get("input") or {}))
    finish = _finish(message.get("stop_reason"))
    if structured and finish == "tool_calls":
        finish = "stop"
    return {
        "id": message.get("id") or "chatcmpl-anthropic",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model") or model,
        "choices": [choice(0, "".join(text), calls, finish)],
        "usage": to_openai_usage(message.get("usage") or {}),
    }


def _structured_text(value) -> str:
    if isinstance(value, dict) and set(value) == {"value"}:
        value = value["value"]   # a schema that is not an object was wrapped in one
    return orjson.dumps(value).decode()


class StreamTranslator:
    """Anthropic stream events in, OpenAI `chat.completion.chunk` SSE events out (text, tool calls
    with their argument deltas, the finish, the usage)."""

    def __init__(self, model: str, include_usage: bool = False, structured: bool = False):
        self.out = ChunkWriter(model, include_usage, "chatcmpl-anthropic")
        self.structured = structured
        self.usage: dict = {}
        self.blocks: dict[int, int | None] = {}   # Anthropic block index -> tool call index (None: text)
        self.finished = False   # a message_delta with the stop reason came
        self.done = False

    @property
    def id(self) -> str:
        return self.out.id

    def feed(self, event: dict) -> list[bytes]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.out.id = message.get("id") or self.out.id
            self.out.model = message.get("model") or self.out.model
            self.usage.update(message.get("usage") or {})
            return [self.out.chunk({})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use" and not self.structured:
                k, chunk = self.out.call_start(str(block.get("id")), str(block.get("name")))
                self.blocks[event.get("index", 0)] = k
                return [chunk]
            text = block.get("text") if block.get("type") == "text" else None
            return [self.out.text(text)] if text else []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "input_json_delta":
                part = delta.get("partial_json") or ""
                k = self.blocks.get(event.get("index", 0))
                if not part:
                    return []
                # A structured answer's JSON is streamed as the text.
                return [self.out.text(part) if k is None else self.out.call_args(k, part)]
            text = delta.get("text") if delta.get("type") == "text_delta" else None
            return [self.out.text(text)] if text else []
        if kind == "message_delta":
            self.usage.update(event.get("usage") or {})   # cumulative counts: the latest wins
            reason = _finish((event.get("delta") or {}).get("stop_reason")) or "stop"
            self.finished = True
            return [self.out.finish("stop" if self.structured and reason == "tool_calls" else reason)]
        if kind == "message_stop":
            if not self.finished:
                raise StreamFailure("message_stop came before any stop_reason: the answer is incomplete")
            self.done = True
            return self.out.end(to_openai_usage(self.usage))
        if kind == "error":
            error = event.get("error") or {}
            raise StreamFailure(str(error.get("message") or error.get("type") or "error event"))
        return []   # ping, content_block_stop, and event types added later


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
        result = to_chat_completion(self.parse_answer(raw), model, answer_schema(body) is not None)
        return UpstreamResponse(200, orjson.dumps(result), result)

    async def chat_stream(self, body: dict, model: str, timeout: float) -> UpstreamStream:
        payload = self._translate(body, model, True)
        translator = StreamTranslator(model, wants_usage(body), answer_schema(body) is not None)
        resp = self.events_of(await self.post("/messages", payload, timeout, stream=True))
        return UpstreamStream(self._events(resp, timeout, translator), resp.close)

    async def embeddings(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        # Anthropic has no embeddings API (it points to Voyage AI); documented in docs/api.md.
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
                    for event in feed(self, translator, data):
                        yield event
        except ProviderError:
            if not translator.done:
                raise
            return   # the client already has a whole answer
        if not translator.done:
            raise self.error(502, f"upstream '{self.spec.name}' ended the stream before message_stop: "
                                  f"the answer is incomplete",
                             kind="stream")
