"""Amazon Bedrock's Converse and ConverseStream APIs behind the OpenAI chat shape, each request
SigV4-signed by botocore with the provider's credentials; the stream's AWS event-stream framing is
decoded by botocore too (optional extra `bedrock`)."""
from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import orjson

from ...lang.spec import ProviderSpec
from .base import HttpProvider, ProviderError, UpstreamResponse, UpstreamStream
from .echo import message_text
from .tools import (ANSWER_TOOL, ChunkWriter, StreamFailure, Untranslatable, answer_schema, arguments,
                    check_fields, choice, completion, function_tools, tool_call, tool_choice, usage, wants_usage)

SERVICE = "bedrock"
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}
# How each OpenAI chat field reaches Converse (docs/api.md, "Provider formats").
FIELDS = {name: "mapped" for name in (
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "stop", "tools", "tool_choice", "response_format", "n")}
FIELDS.update({name: "dropped" for name in (
    "user", "seed", "frequency_penalty", "presence_penalty", "metadata", "store", "service_tier",
    "parallel_tool_calls")})
_IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}


def to_converse_request(body: dict) -> dict:
    """An OpenAI chat body as a Converse body (the model is in the path)."""
    check_fields(body, FIELDS)
    if body.get("n") not in (None, 1):
        raise Untranslatable("n other than 1 (one answer per request)")
    system, messages = [], []
    for message in body.get("messages") or ():
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.append({"text": message_text(message.get("content"))})
        elif role in ("user", "assistant"):
            blocks = _blocks(message.get("content"))
            for call in message.get("tool_calls") or ():
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict):
                    raise Untranslatable("a tool call without a function")
                blocks.append({"toolUse": {"toolUseId": str(call.get("id") or ""), "name": fn.get("name"),
                                           "input": arguments(fn.get("arguments"))}})
            _add(messages, role, blocks or [{"text": " "}])   # Converse refuses empty text blocks
        elif role == "tool":
            result = {"toolUseId": str(message.get("tool_call_id") or ""),
                      "content": [{"text": message_text(message.get("content")) or " "}]}
            _add(messages, "user", [{"toolResult": result}])
        else:
            raise Untranslatable(f"messages with role '{role}'")
    out: dict = {"messages": messages}
    if system:
        out["system"] = system
    config = {}
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit:
        config["maxTokens"] = limit
    for name, key in (("temperature", "temperature"), ("top_p", "topP")):
        if body.get(name) is not None:
            config[key] = body[name]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if config:
        out["inferenceConfig"] = config
    _tools(body, out)
    return out


def _add(messages: list, role: str, blocks: list) -> None:
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)   # Converse wants turns to alternate
    else:
        messages.append({"role": role, "content": blocks})


def _blocks(content) -> list[dict]:
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
            if part.get("text"):
                out.append({"text": part["text"]})
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url", "") if isinstance(ref, dict) else str(ref or "")
            mime, _, data = url[5:].partition(";base64,") if url.startswith("data:") else ("", "", "")
            if mime not in _IMAGE_FORMATS or not data:
                raise Untranslatable("images other than base64 data: URLs of png, jpeg, gif or webp")
            # The JSON wire form of a blob is base64, which is what the data: URL holds already.
            out.append({"image": {"format": _IMAGE_FORMATS[mime], "source": {"bytes": data}}})
        else:
            raise Untranslatable(f"content parts of type '{kind}'")
    return out


def _tools(body: dict, out: dict) -> None:
    tools = function_tools(body)
    choice_ = tool_choice(body)
    schema = answer_schema(body)
    if schema is not None:
        if tools:
            raise Untranslatable("response_format json_schema together with tools")
        if schema.get("type") != "object":
            schema = {"type": "object", "properties": {"value": schema}, "required": ["value"]}
        spec = {"name": ANSWER_TOOL, "description": "Answer with this tool; its input is the answer.",
                "inputSchema": {"json": schema}}
        out["toolConfig"] = {"tools": [{"toolSpec": spec}], "toolChoice": {"tool": {"name": ANSWER_TOOL}}}
        return
    if not tools:
        if choice_ not in (None, "none", "auto"):
            raise Untranslatable("tool_choice without tools")
        return
    if choice_ == "none":
        raise Untranslatable("tool_choice 'none' with tools (Converse has no such choice)")
    specs = [{"toolSpec": {"name": n, **({"description": d} if d else {}), "inputSchema": {"json": p}}}
             for n, d, p in tools]
    config: dict = {"tools": specs}
    if isinstance(choice_, tuple):
        config["toolChoice"] = {"tool": {"name": choice_[1]}}
    elif choice_ == "required":
        config["toolChoice"] = {"any": {}}
    elif choice_ == "auto":
        config["toolChoice"] = {"auto": {}}
    out["toolConfig"] = config


def _usage(data: dict | None) -> dict:
    data = data or {}
    prompt = (data.get("inputTokens") or 0) + (data.get("cacheReadInputTokens") or 0)
    out = usage(prompt, data.get("outputTokens") or 0)
    if data.get("cacheReadInputTokens"):
        out["prompt_tokens_details"] = {"cached_tokens": data["cacheReadInputTokens"]}
    return out


def _structured(value) -> str:
    if isinstance(value, dict) and set(value) == {"value"}:
        value = value["value"]
    return orjson.dumps(value).decode()


def to_chat_completion(answer: dict, model: str, structured: bool = False) -> dict:
    message = (answer.get("output") or {}).get("message") or {}
    text, calls = [], []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            text.append(block["text"])
        use = block.get("toolUse")
        if isinstance(use, dict):
            if structured and use.get("name") == ANSWER_TOOL:
                text.append(_structured(use.get("input")))
            else:
                calls.append(tool_call(str(use.get("toolUseId")), str(use.get("name")), use.get("input") or {}))
    finish = FINISH_REASONS.get(answer.get("stopReason"), "stop")
    if structured and finish == "tool_calls":
        finish = "stop"
    return completion("chatcmpl-bedrock", model, [choice(0, "".join(text), calls, finish)],
                      _usage(answer.get("usage")))


class StreamTranslator:
    """ConverseStream events (event type, payload) in, OpenAI chunks out."""

    def __init__(self, model: str, include_usage: bool, structured: bool = False):
        self.out = ChunkWriter(model, include_usage, "chatcmpl-bedrock")
        self.structured = structured
        self.blocks: dict[int, int | None] = {}   # content block index -> tool call index
        self.usage: dict = {}
        self.stopped = False
        self.done = False

    def feed(self, kind: str, event: dict) -> list[bytes]:
        if kind == "messageStart":
            return [self.out.chunk({})]
        if kind == "contentBlockStart":
            use = (event.get("start") or {}).get("toolUse")
            if isinstance(use, dict) and not self.structured:
                k, chunk = self.out.call_start(str(use.get("toolUseId")), str(use.get("name")))
                self.blocks[event.get("contentBlockIndex", 0)] = k
                return [chunk]
            return []
        if kind == "contentBlockDelta":
            delta = event.get("delta") or {}
            if isinstance(delta.get("text"), str) and delta["text"]:
                return [self.out.text(delta["text"])]
            use = delta.get("toolUse")
            part = use.get("input") if isinstance(use, dict) else None
            if part:
                k = self.blocks.get(event.get("contentBlockIndex", 0))
                return [self.out.text(part) if k is None else self.out.call_args(k, part)]
            return []
        if kind == "messageStop":
            self.stopped = True
            reason = FINISH_REASONS.get(event.get("stopReason"), "stop")
            return [self.out.finish("stop" if self.structured and reason == "tool_calls" else reason)]
        if kind == "metadata":
            self.usage = event.get("usage") or {}
            if not self.stopped:
                raise StreamFailure("metadata came before messageStop: the answer is incomplete")
            self.done = True
            return self.out.end(_usage(self.usage))
        return []   # contentBlockStop and event types added later


def _signer():
    try:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
    except ImportError:   # pragma: no cover - the extra is missing
        raise RuntimeError("format bedrock needs botocore: pip install 'edgerules[bedrock]'") from None
    return SigV4Auth, AWSRequest, Credentials


class BedrockProvider(HttpProvider):
    def __init__(self, spec: ProviderSpec):
        super().__init__(spec, spec.url or f"https://bedrock-runtime.{spec.region}.amazonaws.com", {})
        sigv4, self._request_class, credentials = _signer()
        self._auth = sigv4(credentials(spec.access_key or "", spec.secret_key or ""), SERVICE, spec.region or "")
        from botocore.eventstream import EventStreamBuffer
        self._buffer_class = EventStreamBuffer

    def headers_for(self, url: str, data: bytes) -> dict[str, str]:
        request = self._request_class(method="POST", url=url, data=data, headers=self.headers)
        self._auth.add_auth(request)   # X-Amz-Date and Authorization over the method, path, headers, body
        return dict(request.headers.items())

    def _path(self, model: str, operation: str) -> str:
        # Model ids hold ':' and ARNs '/': one path segment, percent-encoded (and signed that way).
        return f"/model/{quote(model, safe='')}/{operation}"

    def _translate(self, body: dict) -> dict:
        try:
            return to_converse_request(body)
        except Untranslatable as exc:
            raise self.error(400, f"provider '{self.spec.name}' (bedrock format) does not translate {exc}",
                             kind="unsupported") from None

    async def chat(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        raw = await self.post(self._path(model, "converse"), self._translate(body), timeout)
        result = to_chat_completion(self.parse_answer(raw), model, answer_schema(body) is not None)
        return UpstreamResponse(200, orjson.dumps(result), result)

    async def chat_stream(self, body: dict, model: str, timeout: float) -> UpstreamStream:
        payload = self._translate(body)
        translator = StreamTranslator(model, wants_usage(body), answer_schema(body) is not None)
        resp = self.events_of(await self.post(self._path(model, "converse-stream"), payload, timeout, stream=True))
        return UpstreamStream(self._events(resp, timeout, translator), resp.close)

    async def embeddings(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        # Bedrock embeds through InvokeModel with a body per model family; not translated (docs/api.md).
        raise self.error(400, f"provider '{self.spec.name}' (bedrock format) does not serve embeddings",
                         kind="unsupported")

    async def _events(self, resp: aiohttp.ClientResponse, timeout: float,
                      translator: StreamTranslator) -> AsyncIterator[bytes]:
        buffer, total, finished = self._buffer_class(), 0, False
        try:
            async for chunk in resp.content.iter_any():
                total += len(chunk)
                if total > self.max_body:
                    raise self.error(502, f"upstream '{self.spec.name}' streamed more than {self.max_body} "
                                          f"bytes (EDGERULES_MAX_UPSTREAM_BODY)", kind="stream")
                buffer.add_data(chunk)
                out = []
                for message in buffer:
                    out += self._translate_event(message, translator)
                if out:
                    yield b"".join(out)
            finished = True
        except ProviderError:
            raise
        except TimeoutError:
            raise self.error(502, f"upstream '{self.spec.name}' sent nothing for {timeout:g}s mid-stream",
                             kind="stream") from None
        except aiohttp.ClientError as exc:
            raise self.error(502, f"upstream '{self.spec.name}' dropped the stream ({type(exc).__name__})",
                             kind="stream") from None
        except Exception as exc:   # botocore's framing errors: bad CRC, bad lengths
            raise self.error(502, f"upstream '{self.spec.name}' sent a broken event stream "
                                  f"({type(exc).__name__})", kind="stream") from None
        finally:
            if finished:
                resp.release()
            else:
                resp.close()
        if not translator.done:
            raise self.error(502, f"upstream '{self.spec.name}' ended the stream before its metadata: "
                                  f"the answer is incomplete", kind="stream")

    def _translate_event(self, message, translator: StreamTranslator) -> list[bytes]:
        headers = message.headers
        try:
            payload = orjson.loads(message.payload) if message.payload else {}
        except orjson.JSONDecodeError:
            raise self.error(502, f"upstream '{self.spec.name}' sent an event that is not JSON",
                             kind="stream") from None
        if headers.get(":message-type") != "event":
            kind = headers.get(":exception-type") or headers.get(":error-code") or "error"
            text = payload.get("message") or payload.get("Message") or headers.get(":error-message") or kind
            raise self.error(502, f"upstream '{self.spec.name}' failed mid-stream: {kind}: {self.redact(str(text))}",
                             kind="stream")
        try:
            return translator.feed(str(headers.get(":event-type")), payload)
        except StreamFailure as exc:
            raise self.error(502, f"upstream '{self.spec.name}' {exc}", kind="stream") from None
