"""Usage of streamed answers: ask the upstream for the final usage chunk, read it, and strip it
again when the client did not ask for it."""
from __future__ import annotations

import re

import orjson

# `"usage":null` rides on every chunk once include_usage is on; a client that did not ask never sees it.
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')
_HAS_USAGE = re.compile(rb'"usage"\s*:\s*\{')


class UsageReader:
    """A stream tap: records the usage chunk in `call.usage`; drops what the client did not ask for.

    Taps chain through `inner`: each one sees the event first, then hands on what it kept.
    """

    __slots__ = ("call", "client_asked", "inner")

    def __init__(self, call, client_asked: bool, inner=None):
        self.call = call
        self.client_asked = client_asked
        self.inner = inner

    def __call__(self, event: bytes) -> bytes:
        out = self.read(event)
        return self.inner(out) if out and self.inner is not None else out

    def read(self, event: bytes) -> bytes:
        if _HAS_USAGE.search(event) is not None:
            try:
                chunk = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                return event
            usage = chunk.get("usage") if isinstance(chunk, dict) else None
            if isinstance(usage, dict):
                self.call.usage = usage
            if self.client_asked or not isinstance(chunk, dict):
                return event
            if not chunk.get("choices"):
                return b""                     # the usage-only chunk the gateway asked for
            del chunk["usage"]
            return b"data: " + orjson.dumps(chunk) + b"\n\n"
        if not self.client_asked and b'"usage"' in event:
            return _NULL_USAGE.sub(b"", event, count=1)
        return event


def ask_stream_usage(call) -> None:
    """Make a streamed chat answer end with its usage (idempotent); a no-op for anything else."""
    if not call.stream or call.kind != "chat" or find_reader(call) is not None:
        return
    options = call.body.get("stream_options")
    asked = isinstance(options, dict) and options.get("include_usage") is True
    if not asked:
        options = dict(options) if isinstance(options, dict) else {}
        options["include_usage"] = True
        call.body = {**call.body, "stream_options": options}   # the client's dict stays as sent
    call.tap = UsageReader(call, asked, call.tap)


def find_reader(call) -> UsageReader | None:
    tap = call.tap
    while tap is not None and not isinstance(tap, UsageReader):
        tap = getattr(tap, "inner", None)
    return tap


def client_asked_usage(call) -> bool:
    """Whether the client itself asked for the usage chunk (before the gateway added it)."""
    reader = find_reader(call)
    if reader is not None:
        return reader.client_asked
    options = call.body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
