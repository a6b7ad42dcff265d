"""Secrets cut across the events of a stream. A model echoing a key token by token puts its start
in one event and its rest in the next, where no per-event redaction sees it whole: per stream, an
event whose text ends with the start of a secret is held back until the next event of the same
text says whether the secret completes (then redacted) or not (then sent as it was)."""
from __future__ import annotations

import re

import orjson

from .redact import REPLACEMENT

# Only an ending this long is held back. Holding every event that ends with "s" (the start of
# "sk-...") would delay a good part of all text; the 1-3 characters that go out are no secret,
# and the rest of the secret in the next event is still redacted.
HOLD_MIN = 4
_DONE = b"data: [DONE]\n\n"


class SplitSecrets:
    """A policy's secrets as a stream needs them, built once: one pattern for all of them and
    every proper prefix (an ending that the next event may complete)."""

    __slots__ = ("texts", "pattern", "prefixes", "longest", "shortest", "first")

    def __init__(self, texts: tuple[str, ...]):
        self.texts = texts   # longest first, as the Redactor keeps them: a secret inside another loses
        self.pattern = re.compile("|".join(re.escape(t) for t in texts))
        self.prefixes = frozenset(t[:k] for t in texts for k in range(1, len(t)))
        self.longest = max(map(len, texts))
        self.shortest = min(map(len, texts))
        self.first = re.compile("[" + "".join(sorted({re.escape(t[0]) for t in texts})) + "]")

    def find(self, text: str) -> list:
        """Every secret in text, leftmost first (the longest where several begin at one place)."""
        if len(text) >= self.shortest:   # most deltas are a token or two: shorter than any secret
            for secret in self.texts:
                if secret in text:
                    return list(self.pattern.finditer(text))
        return []

    def open_end(self, text: str, start: int) -> int:
        """The length of the longest ending of text[start:] that begins a secret (0 for none)."""
        n = len(text)
        lo = max(start, n - self.longest + 1)
        if self.first.search(text, lo) is None:   # most texts end far from any secret's first character
            return 0
        prefixes = self.prefixes
        for k in range(n - lo, 0, -1):
            if text[-k:] in prefixes:
                return k
        return 0


class _Held:
    """An event kept back: its parsed JSON, the text field it carries, what comes before the
    ending it holds, and its channel."""

    __slots__ = ("event", "kind", "box", "field", "head", "key")

    def __init__(self, event, kind, box, field, head, key):
        self.event, self.kind, self.box, self.field, self.head, self.key = event, kind, box, field, head, key


class StreamRedactor:
    """One stream's redaction: each event's bytes as the Redactor does, then its text deltas
    across events. Events keep their number and order; text only moves to an earlier event of
    its channel, so the characters the client puts together are the same, secrets replaced."""

    __slots__ = ("redactor", "secrets", "wants", "slots", "apart", "channels", "held")

    def __init__(self, redactor, shape: str):
        self.redactor = redactor
        self.secrets = redactor.split_secrets()
        self.wants, self.slots, self.apart = SHAPES[shape]
        self.channels: dict = {}   # channel -> (the open ending of its text, how much of it went out)
        # Held events by channel, in the order they were held. Where channels are put together
        # apart (chat choices), a delta of another one passes a held event; elsewhere (numbered
        # Responses events, Messages blocks) any other event releases it first, keeping the order.
        self.held: dict = {}

    def feed(self, blob: bytes) -> bytes:
        """What to send for one read of the stream (b"" while its only event is held)."""
        if blob.count(b"\n\n") <= 1:
            out = self._event(blob)
        else:
            out = b"".join([self._event(e + b"\n\n") for e in blob.split(b"\n\n") if e])
        # Then every secret in what goes out (ids, names, any field), as for a JSON answer: after the
        # text pass, which knows that a held ending like "sk-ab12" may begin a longer secret.
        return self.redactor.bytes(out)

    def close(self) -> bytes:
        """The held events, if any: at the end of the stream or before its error event."""
        return self.redactor.bytes(self._release_all()) if self.held else b""

    def _event(self, event: bytes) -> bytes:
        kind, data = None, event
        if event.startswith(b"event: "):
            cut = event.find(b"\n")
            kind, data = event[7:cut], event[cut + 1:]
        slots = None
        if data.startswith(b"data: ") and data != _DONE and self.wants(kind):
            try:
                parsed = orjson.loads(data[6:])
            except orjson.JSONDecodeError:
                parsed = None
            if parsed.__class__ is dict:
                slots = self.slots(parsed)
        if not slots:   # no text: whatever is held goes first, and this event as it came
            return event if not self.held else self._release_all() + event
        if not self.held and len(slots) == 1:
            # The common case, checked first: nothing open on the channel, and a delta too short
            # to hold a secret whose ending begins none.
            key, box, field, _ = slots[0]
            text = box[field]
            if key not in self.channels and len(text) < self.secrets.shortest and not self.secrets.open_end(text, 0):
                return event
        out = []
        may_hold = len(slots) == 1 and not slots[0][3]
        changed = False
        for key, box, field, _ in slots:
            if self.held and not self.apart and key not in self.held:
                out.append(self._release_all())
            held = self.held.pop(key, None)
            text = box[field]
            released, rest = self._text(key, text, may_hold)
            if held is not None:
                # The held event takes what is released (its ending completed or not); this one
                # carries only what is held back now.
                held.box[held.field] = held.head + released
                out.append(_framed(held.event, held.kind))
                head = ""
            else:
                head = released
            if rest:   # only when may_hold: this event's one slot
                box[field] = head + rest   # what it would carry if released as it is
                self.held[key] = _Held(parsed, kind, box, field, head, key)
                return b"".join(out)
            if head != text:
                box[field] = head
                changed = True
        out.append(_framed(parsed, kind) if changed else event)
        return b"".join(out)

    def _text(self, key, text: str, may_hold: bool) -> tuple[str, str]:
        """(the text this channel releases now, redacted; the ending it holds back, or "")."""
        secrets = self.secrets
        pending, sent = self.channels.get(key, ("", 0))
        s = pending + text if pending else text
        found = secrets.find(s)
        k = secrets.open_end(s, 0)
        start = len(s) - k
        for m in found:
            # A secret that is complete and reaches into the open ending is redacted whole; the
            # ending starts after it. One inside the ending may still grow into a longer secret.
            if m.start() < start < m.end():
                k = secrets.open_end(s, m.end())
                start = len(s) - k
        cut = max(start, sent) if k >= HOLD_MIN and may_hold else len(s)
        released = _redacted(s, found, sent, cut) if found else s[sent:cut]
        if k:
            self.channels[key] = (s[start:], cut - start)
        elif pending:
            del self.channels[key]
        return released, s[cut:]

    def _release_all(self) -> bytes:
        held, self.held = self.held, {}
        return b"".join([self._release(one) for one in held.values()])

    def _release(self, held: _Held) -> bytes:
        pending, sent = self.channels[held.key]
        found = self.secrets.find(pending)   # the ending may hold a secret that a longer one begins with
        held.box[held.field] = held.head + (_redacted(pending, found, sent, len(pending)) if found
                                            else pending[sent:])
        self.channels[held.key] = (pending, len(pending))
        return _framed(held.event, held.kind)


def _redacted(s: str, found: list, at: int, cut: int) -> str:
    """s[at:cut] with each secret found replaced; s[:at] went out already."""
    pieces = []
    for m in found:
        if m.end() <= at:
            continue
        if m.end() > cut:
            break   # in the held ending: a longer secret may still begin there
        if m.start() > at:
            pieces.append(s[at:m.start()])
        pieces.append(REPLACEMENT)   # for one that began in what went out, in place of its rest
        at = m.end()
    pieces.append(s[at:cut])
    return "".join(pieces)


def _framed(event: dict, kind: bytes | None) -> bytes:
    data = b"data: " + orjson.dumps(event) + b"\n\n"
    return data if kind is None else b"event: " + kind + b"\n" + data


# ---- where each shape carries its text --------------------------------------------------------
# A shape is (a cheap look at the event's name: worth parsing?, the event's text slots, whether
# its channels may pass each other): each slot is (channel, the dict holding the text, its field,
# whether the channel ends with this event).

_CHAT_TEXT = ("content", "reasoning_content", "refusal")


def _plain(value):
    return value if value.__class__ in (int, str) else None   # a channel key must be hashable


def _choice_slots(event: dict, names: tuple[str, ...], in_delta: bool) -> list:
    slots = []
    choices = event.get("choices")
    if choices.__class__ is not list:
        return slots
    for choice in choices:
        if choice.__class__ is not dict:
            continue
        index, final = _plain(choice.get("index", 0)), bool(choice.get("finish_reason"))
        box = choice.get("delta") if in_delta else choice
        if box.__class__ is not dict:
            continue
        for name in names:
            value = box.get(name)
            if value.__class__ is str and value:
                slots.append(((index, name), box, name, final))
        for call in (box.get("tool_calls") or ()) if in_delta else ():
            function = call.get("function") if call.__class__ is dict else None
            if function.__class__ is dict and function.get("arguments").__class__ is str and function["arguments"]:
                slots.append(((index, "tool", _plain(call.get("index", 0))), function, "arguments", final))
    return slots


def _chat_slots(event: dict) -> list:
    choices = event.get("choices")
    if choices.__class__ is list and len(choices) == 1 and choices[0].__class__ is dict:
        # Most chunks: one choice whose delta is only its content.
        choice = choices[0]
        delta = choice.get("delta")
        if delta.__class__ is dict and len(delta) == 1 and delta.get("content").__class__ is str:
            return [((_plain(choice.get("index", 0)), "content"), delta, "content",
                     bool(choice.get("finish_reason")))] if delta["content"] else []
    return _choice_slots(event, _CHAT_TEXT, True)


def _completion_slots(event: dict) -> list:
    return _choice_slots(event, ("text",), False)


def _responses_slots(event: dict) -> list:
    # response.output_text.delta, .refusal.delta, .function_call_arguments.delta, reasoning...
    delta = event.get("delta")
    if delta.__class__ is not str or not delta:
        return []
    key = (_plain(event.get("type")), _plain(event.get("item_id")), _plain(event.get("output_index")),
           _plain(event.get("content_index")))
    return [(key, event, "delta", False)]


_MESSAGES_TEXT = ("text", "partial_json", "thinking")


def _messages_slots(event: dict) -> list:
    delta = event.get("delta")
    if delta.__class__ is not dict:
        return []
    for name in _MESSAGES_TEXT:   # a delta carries one of them
        value = delta.get(name)
        if value.__class__ is str:
            return [((_plain(event.get("index")), name), delta, name, False)] if value else []
    return []


def _any(kind) -> bool:
    return True


SHAPES = {   # (worth parsing, its text slots, whether its channels may pass each other)
    "chat": (_any, _chat_slots, True),
    "completions": (_any, _completion_slots, True),
    "responses": (lambda kind: kind is None or kind.endswith(b".delta"), _responses_slots, False),
    "messages": (lambda kind: kind is None or kind == b"content_block_delta", _messages_slots, False),
}
