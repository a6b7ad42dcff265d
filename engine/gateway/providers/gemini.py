"""Google Gemini's native API behind the OpenAI chat shape: `generateContent`,
`streamGenerateContent?alt=sse` and `batchEmbedContents`, with the key in `x-goog-api-key`."""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from urllib.parse import quote

import aiohttp
import orjson

from ...lang.spec import ProviderSpec
from .base import HttpProvider, UpstreamResponse, UpstreamStream, error_message
from .echo import message_text
from .tools import (ChunkWriter, StreamFailure, Untranslatable, answer_schema, arguments, check_fields, choice, feed,
                    completion, function_tools, tool_call, tool_choice, tool_names, usage, wants_usage)

DEFAULT_URL = "https://generativelanguage.googleapis.com/v1beta"
FINISH_REASONS = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
                  "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
                  "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter"}
# How each OpenAI chat field reaches generateContent (docs/api.md, "Provider formats").
FIELDS = {name: "mapped" for name in (
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "stop", "tools", "tool_choice", "response_format", "n", "seed", "frequency_penalty",
    "presence_penalty", "logprobs", "top_logprobs")}
FIELDS.update({name: "dropped" for name in ("user", "metadata", "store", "service_tier", "parallel_tool_calls")})
_GENERATION = (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
               ("frequency_penalty", "frequencyPenalty"), ("presence_penalty", "presencePenalty"),
               ("n", "candidateCount"), ("top_logprobs", "logprobs"))
# The OpenAPI subset Gemini's schemas take; other JSON-schema keywords are left out (docs/api.md).
_SCHEMA_KEYS = frozenset({"type", "format", "description", "nullable", "enum", "properties", "required",
                          "items", "minItems", "maxItems", "anyOf", "minimum", "maximum", "title",
                          "propertyOrdering", "minLength", "maxLength", "pattern", "minProperties",
                          "maxProperties", "default", "example"})


def gemini_schema(schema):
    if isinstance(schema, list):
        return [gemini_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: gemini_schema(s) for name, s in value.items()}
        elif key in ("items", "anyOf"):
            out[key] = gemini_schema(value)
        else:
            out[key] = value
    return out


def to_gemini_request(body: dict) -> dict:
    """An OpenAI chat body as a Gemini `GenerateContentRequest`."""
    check_fields(body, FIELDS)
    names = tool_names(body.get("messages"))
    system, contents = [], []
    for message in body.get("messages") or ():
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append({"text": message_text(message.get("content"))})
        elif role in ("user", "assistant"):
            parts = _parts(message.get("content"))
            for call in message.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    raise Untranslatable("a tool call without a function")
                parts.append({"functionCall": {"name": fn.get("name"), "args": arguments(fn.get("arguments"))}})
            _add(contents, "model" if role == "assistant" else "user", parts or [{"text": ""}])
        elif role == "tool":
            call_id = str(message.get("tool_call_id") or "")
            text = message_text(message.get("content"))
            try:
                result = orjson.loads(text)
            except orjson.JSONDecodeError:
                result = None
            response = result if isinstance(result, dict) else {"result": text}
            _add(contents, "user", [{"functionResponse": {"name": names.get(call_id, call_id), "response": response}}])
        else:
            raise Untranslatable(f"messages with role '{role}'")
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    tools = function_tools(body)
    choice_ = tool_choice(body)
    if tools:
        out["tools"] = [{"functionDeclarations": [
            {"name": n, **({"description": d} if d else {}), "parameters": gemini_schema(p)} for n, d, p in tools]}]
    if choice_ is not None and (tools or choice_ not in ("none", "auto")):
        if not tools:
            raise Untranslatable("tool_choice without tools")
        mode = {"none": "NONE", "required": "ANY", "auto": "AUTO"}.get(choice_) if isinstance(choice_, str) else "ANY"
        calling = {"mode": mode}
        if isinstance(choice_, tuple):
            calling["allowedFunctionNames"] = [choice_[1]]
        out["toolConfig"] = {"functionCallingConfig": calling}
    return out


def _add(contents: list, role: str, parts: list) -> None:
    # Gemini wants turns to alternate: the results of parallel calls share one user turn.
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _parts(content) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise Untranslatable("message content that is neither a string nor a list of parts")
    out = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            out.append({"text": part.get("text", "")})
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url", "") if isinstance(ref, dict) else str(ref or "")
            if not (url.startswith("data:") and ";base64," in url):
                raise Untranslatable("image URLs that are not data: URLs (Gemini takes inline images)")
            mime, data = url[5:].split(";base64,", 1)
            out.append({"inlineData": {"mimeType": mime, "data": data}})
        else:
            raise Untranslatable(f"content parts of type '{kind}'")
    return out


def _generation_config(body: dict) -> dict:
    config = {}
    for name, key in _GENERATION:
        if body.get(name) is not None:
            config[key] = body[name]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("logprobs"):
        config["responseLogprobs"] = True
    schema = answer_schema(body)
    if schema is not None:
        config["responseMimeType"] = "application/json"
        if schema != {"type": "object"}:
            config["responseSchema"] = gemini_schema(schema)
    return config


def _usage(meta: dict | None) -> dict:
    meta = meta or {}
    prompt = meta.get("promptTokenCount") or 0
    done = (meta.get("candidatesTokenCount") or 0) + (meta.get("thoughtsTokenCount") or 0)
    out = usage(prompt, done)
    if meta.get("cachedContentTokenCount"):
        out["prompt_tokens_details"] = {"cached_tokens": meta["cachedContentTokenCount"]}
    return out


def _candidate_parts(candidate: dict) -> tuple[str, list[tuple[str, dict]]]:
    text, calls = [], []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            text.append(part["text"])
        call = part.get("functionCall")
        if isinstance(call, dict):
            calls.append((str(call.get("name")), call.get("args") or {}))
    return "".join(text), calls


def _finish(reason: str | None, calls: bool) -> str | None:
    if not reason:
        return None
    return "tool_calls" if calls and reason == "STOP" else FINISH_REASONS.get(reason, "stop")


def to_chat_completion(answer: dict, model: str) -> dict:
    choices = []
    for i, candidate in enumerate(answer.get("candidates") or ()):
        text, calls = _candidate_parts(candidate)
        index = candidate.get("index", i)
        openai_calls = [tool_call(f"call_{index}_{k}", name, args) for k, (name, args) in enumerate(calls)]
        choices.append(choice(index, text, openai_calls, _finish(candidate.get("finishReason"), bool(calls))))
    if not choices:
        blocked = (answer.get("promptFeedback") or {}).get("blockReason")
        choices.append(choice(0, "", [], "content_filter" if blocked else "stop"))
    return completion(answer.get("responseId") or "chatcmpl-gemini", answer.get("modelVersion") or model,
                      choices, _usage(answer.get("usageMetadata")))


class StreamTranslator:
    """Gemini stream chunks (each a partial GenerateContentResponse) in, OpenAI chunks out.
    Gemini sends a function call whole, so each becomes one tool-call delta with all its arguments."""

    def __init__(self, model: str, include_usage: bool):
        self.out = ChunkWriter(model, include_usage, "chatcmpl-gemini")
        self.usage: dict = {}
        self.finished: set[int] = set()
        self.called: set[int] = set()
        self.seen: set[int] = set()

    def feed(self, event: dict) -> list[bytes]:
        if "error" in event and "candidates" not in event:
            raise StreamFailure(error_message(orjson.dumps(event), "error event"))
        if event.get("responseId"):
            self.out.id = event["responseId"]
        if isinstance(event.get("usageMetadata"), dict):
            self.usage = event["usageMetadata"]   # cumulative: the latest wins
        out = []
        for i, candidate in enumerate(event.get("candidates") or ()):
            index = candidate.get("index", i)
            self.seen.add(index)
            text, calls = _candidate_parts(candidate)
            if text:
                out.append(self.out.text(text, index))
            for name, args in calls:
                self.called.add(index)
                k = self.out.calls.get(index, 0)
                out.append(self.out.call_start(f"call_{index}_{k}", name, orjson.dumps(args).decode(), index)[1])
            reason = candidate.get("finishReason")
            if reason:
                self.finished.add(index)
                out.append(self.out.finish(_finish(reason, index in self.called), index))
        return out

    def end(self) -> list[bytes]:
        if not self.seen or self.seen - self.finished:
            raise StreamFailure("the stream ended before a finishReason: the answer is incomplete")
        return self.out.end(_usage(self.usage))


class GeminiProvider(HttpProvider):
    def __init__(self, spec: ProviderSpec):
        super().__init__(spec, spec.url or DEFAULT_URL, {"x-goog-api-key": spec.api_key} if spec.api_key else {})

    def _translate(self, body: dict) -> dict:
        try:
            return to_gemini_request(body)
        except Untranslatable as exc:
            raise self.error(400, f"provider '{self.spec.name}' (gemini format) does not translate {exc}",
                             kind="unsupported") from None

    def _model(self, model: str) -> str:
        return "/models/" + quote(model.removeprefix("models/"), safe="")

    async def chat(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        raw = await self.post(self._model(model) + ":generateContent", self._translate(body), timeout)
        result = to_chat_completion(self.parse_answer(raw), model)
        return UpstreamResponse(200, orjson.dumps(result), result)

    async def chat_stream(self, body: dict, model: str, timeout: float) -> UpstreamStream:
        payload = self._translate(body)
        translator = StreamTranslator(model, wants_usage(body))
        resp = self.events_of(await self.post(self._model(model) + ":streamGenerateContent?alt=sse", payload,
                                              timeout, stream=True))
        return UpstreamStream(self._events(resp, timeout, translator), resp.close)

    async def embeddings(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise self.error(400, f"provider '{self.spec.name}' (gemini format) embeds text inputs only "
                                  f"(not token arrays)", kind="unsupported")
        name = "models/" + model.removeprefix("models/")
        extra = {"outputDimensionality": body["dimensions"]} if body.get("dimensions") else {}
        payload = {"requests": [{"model": name, "content": {"parts": [{"text": t}]}, **extra} for t in inputs]}
        raw = await self.post(self._model(model) + ":batchEmbedContents", payload, timeout)
        answer = self.parse_answer(raw)
        data = [{"object": "embedding", "index": i, "embedding": e.get("values") or []}
                for i, e in enumerate(answer.get("embeddings") or ())]
        tokens = sum(max(1, (len(t) + 3) // 4) for t in inputs)   # Gemini does not count them here
        result = {"object": "list", "data": data, "model": model,
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return UpstreamResponse(200, orjson.dumps(result), result)

    async def models(self) -> list[str]:
        data = await self.get_json("/models", min(self.spec.timeout, 10.0))
        items = data.get("models") if data else None
        if not isinstance(items, list):
            return []
        return [m["name"].removeprefix("models/") for m in items if isinstance(m, dict) and isinstance(m.get("name"), str)]

    async def _events(self, resp: aiohttp.ClientResponse, timeout: float,
                      translator: StreamTranslator) -> AsyncIterator[bytes]:
        async with aclosing(self.sse_data(resp, timeout)) as events:
            async for data in events:
                for event in feed(self, translator, data):
                    yield event
        try:
            tail = translator.end()
        except StreamFailure as exc:
            raise self.error(502, f"upstream '{self.spec.name}' {exc}", kind="stream") from None
        for event in tail:
            yield event
