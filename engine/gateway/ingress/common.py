"""What every ingress shape shares: the adapter interface, the per-request exchange that forwards
to a provider (pass-through to a provider of the same format, else through chat completions),
and the small helpers the translations use."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import aclosing

import orjson

from ..errors import GatewayError
from ..providers.base import ProviderError, UpstreamResponse, UpstreamStream, error_message

# The top-level "type" of an event's JSON: Anthropic and Responses events put it first.
_TYPE = re.compile(rb'"type"\s*:\s*"([A-Za-z0-9_.\-]+)"')
_HAS_USAGE = re.compile(rb'"usage"\s*:\s*\{')


class Ingress:
    """One API shape clients send. Subclasses say which provider formats speak it natively and
    how it maps to and from chat completions."""

    path = ""                       # the upstream path of a same-format provider, e.g. "/messages"
    native: frozenset = frozenset()  # provider formats that get the body as sent
    named_events = False            # SSE events carry `event: <type>` lines
    delta_shape = "chat"            # where its stream events carry text (streamredact.SHAPES)
    final_events: frozenset = frozenset()   # the event types that end a whole stream ([DONE] if none)
    # Fields of the body as sent that the chat form restates: left out of what the policy reads
    # (the chat form's messages already hold a Responses `input`; counting both would double it).
    restated: frozenset = frozenset()

    def credential(self, headers: dict) -> str | None:
        return headers.get("authorization")

    def validate(self, body: dict) -> None: ...

    def to_chat(self, body: dict) -> tuple[dict, list[str], str | None]:
        """(the chat body, what it cannot carry, a reason only a native provider will do)."""
        raise NotImplementedError

    def from_chat(self, answer: dict, raw: dict, model: str) -> dict:
        raise NotImplementedError

    def stream_translator(self, raw: dict, model: str, call) -> "ChatStreamTranslator":
        raise NotImplementedError

    def accept(self, body: dict) -> "Exchange":
        self.validate(body)
        chat, refused, native_only = self.to_chat(body)
        return Exchange(self, body, chat, refused, native_only)


class ChatStreamTranslator:
    """Chat-completion chunk data in, ingress SSE events out."""

    def feed(self, chunk: dict) -> list[bytes]:
        raise NotImplementedError

    def close(self) -> list[bytes]:
        """Events after `[DONE]`."""
        raise NotImplementedError


class Exchange:
    """One ingress request on its way: the body as sent, its chat form (what non-native providers
    get), what the policy reads, and how to forward it to one provider."""

    __slots__ = ("ingress", "raw", "chat", "view", "refused", "native_only")

    def __init__(self, ingress: Ingress, raw: dict, chat: dict, refused: list[str], native_only: str | None):
        self.ingress, self.raw, self.chat = ingress, raw, chat
        self.refused, self.native_only = refused, native_only
        # The policy reads the chat form, so `model`, `max_tokens`, `tools`, the message count mean
        # the same on every shape; fields only the shape has (`metadata`, `reasoning`, `thinking`)
        # stay readable as `body.NAME`.
        if chat is raw:
            self.view = raw
        else:
            self.view = {k: v for k, v in raw.items() if k not in ingress.restated}
            self.view.update(chat)

    async def forward(self, call, provider, model: str, timeout: float):
        """An UpstreamResponse or an UpstreamStream, in the ingress shape."""
        ingress = self.ingress
        fmt = provider.spec.format
        if fmt in ingress.native and hasattr(provider, "passthrough"):
            return await self._passthrough(call, provider, model, timeout)
        where = f"provider '{provider.spec.name}' ({fmt} format)"
        if self.native_only:
            raise provider.error(400, f"{self.native_only} needs a provider of format "
                                      f"{' or '.join(sorted(ingress.native))}; {where} cannot serve it",
                                 kind="unsupported")
        if self.refused:
            raise provider.error(400, f"{where} cannot carry {', '.join(self.refused)} of "
                                      f"POST /v1{ingress.path}: send it to a provider of format "
                                      f"{' or '.join(sorted(ingress.native))}, or leave it out",
                                 kind="unsupported")
        if call.stream:
            stream = await provider.chat_stream(self.chat, model, timeout)
            translator = ingress.stream_translator(self.raw, model, call)
            # The release must be synchronous: the inner stream's own (its connection's close).
            return UpstreamStream(_translated(stream, translator), getattr(stream, "_release", None))
        answer = await provider.chat(self.chat, model, timeout)
        provider.parseable(answer.body)
        data = ingress.from_chat(answer.json(), self.raw, model)
        return UpstreamResponse(200, orjson.dumps(data), data)

    async def _passthrough(self, call, provider, model: str, timeout: float):
        payload = {**self.raw, "model": model}
        if not call.stream:
            raw = await provider.passthrough(self.ingress.path, payload, timeout)
            return UpstreamResponse(200, raw, _native_answer(provider, raw))
        resp = provider.events_of(await provider.passthrough(self.ingress.path, payload, timeout, stream=True))
        return UpstreamStream(_native_events(self.ingress, provider, resp, timeout, call), resp.close)


def _native_answer(provider, raw: bytes) -> dict | None:
    """A 200 answer that is a JSON object and not an error in disguise (a Response carries
    `"error": null`, so only an error object counts). One too big to parse quickly on the event
    loop is only looked at: its usage is then read from its ends."""
    if len(raw) > provider.max_parsed:
        if not raw[:64].lstrip().startswith(b"{"):
            raise provider.error(502, f"upstream '{provider.spec.name}' answered 200 with a body that is not a "
                                      f"JSON object", upstream_status=200)
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise provider.error(502, f"upstream '{provider.spec.name}' answered 200 with a body that is not a "
                                  f"JSON object", upstream_status=200)
    if data.get("type") == "error" or isinstance(data.get("error"), dict):
        error = data.get("error") if isinstance(data.get("error"), dict) else {}
        raise provider.error(502, f"upstream '{provider.spec.name}' answered 200 with an error: "
                                  f"{provider.redact(str(error.get('message') or 'unknown error'))}",
                             upstream_status=200)
    return data


async def _translated(stream: UpstreamStream, translator: ChatStreamTranslator) -> AsyncIterator[bytes]:
    try:
        async for blob in stream:
            out = []
            for event in blob.split(b"\n\n"):
                if not event.startswith(b"data: "):
                    continue
                data = event[6:]
                if data == b"[DONE]":
                    out += translator.close()
                    continue
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise ProviderError(502, "a provider's stream event is not JSON", kind="stream") from None
                if isinstance(chunk, dict):
                    out += translator.feed(chunk)
            if out:
                yield b"".join(out)
    finally:
        await stream.aclose()   # closing this generator closes the provider's stream now


async def _native_events(ingress: Ingress, provider, resp, timeout: float, call) -> AsyncIterator[bytes]:
    """The provider's own events, re-framed whole (so the redactor sees each one entire), with
    their usage read on the way for limits and the access log.

    A stream is whole only with its final event (`message_stop`, `response.completed`, `[DONE]`):
    one that ends without it, or with an error event, ends with the gateway's error event, never
    as a silently shorter answer.
    """
    usage: dict = {}
    done = False
    name = provider.spec.name
    async with aclosing(provider.sse_batches(resp, timeout)) as batches:
        async for batch in batches:
            out = []
            for data in batch:
                if done:
                    continue   # drained so the connection goes back to the pool
                kind = m.group(1) if ingress.named_events and (m := _TYPE.search(data)) is not None else None
                if kind == b"error" or data.startswith((b'{"error"', b'{ "error"')):
                    if out:
                        yield b"".join(out)   # what came before the error is delivered
                    message = error_message(data, "error event", provider.redactor)
                    raise provider.error(502, f"upstream '{name}' failed mid-stream: {message}", kind="stream")
                if _HAS_USAGE.search(data) is not None:
                    _read_usage(data, usage)
                    call.usage = dict(usage)
                if kind is not None:
                    done = kind in ingress.final_events
                    out.append(b"event: " + kind + b"\ndata: " + data + b"\n\n")
                else:
                    done = data == b"[DONE]" and not ingress.final_events
                    out.append(b"data: " + data + b"\n\n")
            if out:
                yield b"".join(out)
    if not done:
        raise provider.error(502, f"upstream '{name}' ended the stream before its last event: the answer "
                                  f"is incomplete", kind="stream")


def _read_usage(data: bytes, usage: dict) -> None:
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if not isinstance(event, dict):
        return
    for holder in (event, event.get("message"), event.get("response")):
        found = holder.get("usage") if isinstance(holder, dict) else None
        if isinstance(found, dict):
            usage.update({k: v for k, v in found.items() if isinstance(v, int) and v})


# ---- helpers the translations share ------------------------------------------------------------

def bad(message: str, param: str, code: str = "invalid_type") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


def require_model(body: dict) -> None:
    from ..requests import MAX_MODEL_LENGTH
    model = body.get("model")
    if model is None:
        raise bad("you must provide a model parameter", "model", "missing_required_parameter")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_LENGTH or not model.isprintable():
        raise bad(f"'model' must be printable text of at most {MAX_MODEL_LENGTH} characters", "model")


def check_types(body: dict, checks: dict[str, tuple[type, ...]]) -> None:
    """Each named field, when present and not null, of one of the types its entry names."""
    for name, kinds in checks.items():
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, kinds) or (value.__class__ is bool and bool not in kinds):
            wanted = " or ".join(_TYPE_NAMES[k] for k in kinds)
            raise bad(f"'{name}' must be {wanted}", name)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "an array", dict: "an object"}


def arguments_object(arguments) -> dict:
    """Chat tool-call arguments (a JSON string) as the object Anthropic's `input` wants."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_arguments": arguments}   # kept, not lost: the model wrote something unparsable
    return value if isinstance(value, dict) else {"_arguments": value}


def chat_usage(usage: dict | None) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens of a chat usage block."""
    usage = usage or {}
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), int(cached or 0)


def sse(kind: str, data: dict, named: bool) -> bytes:
    body = orjson.dumps(data)
    return (b"event: " + kind.encode() + b"\ndata: " + body + b"\n\n") if named else b"data: " + body + b"\n\n"


def text_of(content) -> str:
    """The text of a string or a list of text blocks/parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""
