"""The built-in echo provider: deterministic answers built from the prompt, with no network."""
from __future__ import annotations

import base64
import hashlib
import re
import struct

import orjson

from .base import DONE, Provider, UpstreamResponse, UpstreamStream

# Fixed so that the same request always gives byte-identical answers (caches and golden tests rely on it).
CREATED = 0
EMBEDDING_DIMENSIONS = 8
_PIECE = re.compile(r"\S+\s*|\s+")


def message_text(content) -> str:
    """The text of a message content: a string, or a list of text parts (other parts are skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def last_user_text(messages) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return message_text(message.get("content"))
    return ""


def estimate_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def prompt_tokens(body: dict) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 1
    return estimate_tokens("".join(message_text(m.get("content")) for m in messages if isinstance(m, dict)))


def answer(body: dict) -> tuple[str, str, str | None]:
    """(content, finish_reason, the stop sequence that cut it) for a chat body."""
    text = "echo: " + last_user_text(body.get("messages"))
    stops = body.get("stop")
    stops = [stops] if isinstance(stops, str) else stops if isinstance(stops, list) else []
    hits = [(text.find(s), s) for s in stops if isinstance(s, str) and s and s in text]
    if hits:
        at, matched = min(hits)
        return text[:at], "stop", matched
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit > 0 and estimate_tokens(text) > limit:
        return text[:limit * 4], "length", None
    return text, "stop", None


def split_pieces(content: str) -> list[str]:
    """A content cut into word-sized stream pieces that join back to it."""
    return _PIECE.findall(content) or [""]


def answer_id(body: dict, model: str, prefix: str = "chatcmpl-echo-") -> str:
    try:
        seed = orjson.dumps([model, body.get("messages")], option=orjson.OPT_SORT_KEYS)
    except TypeError:
        seed = repr((model, body.get("messages"))).encode()
    return prefix + hashlib.sha1(seed).hexdigest()[:24]


def _usage(body: dict, content: str) -> dict:
    prompt, done = prompt_tokens(body), estimate_tokens(content)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def completion(body: dict, model: str) -> dict:
    content, finish, _ = answer(body)
    return {
        "id": answer_id(body, model),
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "logprobs": None, "finish_reason": finish}],
        "usage": _usage(body, content),
    }


def stream_events(body: dict, model: str) -> list[dict]:
    """The chunks of a streamed answer, as OpenAI sends them (without the final [DONE])."""
    content, finish, _ = answer(body)
    pieces = split_pieces(content)
    options = body.get("stream_options")
    with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    head = {"id": answer_id(body, model), "object": "chat.completion.chunk",
            "created": CREATED, "model": model}

    def chunk(delta: dict, finish_reason: str | None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        out = {**head, "choices": [choice]}
        if with_usage:
            out["usage"] = None
        return out

    events = [chunk({"role": "assistant", "content": pieces[0]}, None)]
    events += [chunk({"content": piece}, None) for piece in pieces[1:]]
    events.append(chunk({}, finish))
    if with_usage:
        events.append({**head, "choices": [], "usage": _usage(body, content)})
    return events


def _inputs(value) -> list:
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return value
    return [value]


# Words too common to tell prompts apart; dropped before hashing.
_STOP_WORDS = frozenset(
    "a an the is are was were be been am i me my we our you your it its this that these those "
    "to of in on at for and or but do does did can could would should will please what whats "
    "how which who whom with about as by from".split())
_WORD = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    """A crude suffix strip ("works", "worked", "working" -> "work"): enough for paraphrases."""
    for suffix in ("ing", "ed", "es", "s", "ly"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[:-len(suffix)]
    return word


def _text_features(text: str) -> dict[str, float]:
    """A normalized text as a bag of words and character trigrams (lower-case, punctuation
    stripped, stop words dropped, suffixes stripped), so that paraphrases share most of their features."""
    words = [_stem(w) for w in _WORD.findall(text.lower().replace("'", "")) if w not in _STOP_WORDS]
    bag: dict[str, float] = {}
    for word in words:
        bag["w:" + word] = bag.get("w:" + word, 0.0) + 1.0
        padded = f" {word} "
        for i in range(len(padded) - 2):
            gram = "t:" + padded[i:i + 3]
            bag[gram] = bag.get(gram, 0.0) + 0.5
    return bag


def _text_vector(text: str, dimensions: int) -> list[float] | None:
    """A hashed bag of the text's features, L2-normalized; None for a text with none."""
    bag = _text_features(text)
    if not bag:
        return None
    out = [0.0] * dimensions
    for feature, weight in bag.items():
        h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
        out[(h >> 1) % dimensions] += weight if h & 1 else -weight
    norm = sum(x * x for x in out) ** 0.5
    if norm == 0.0:
        return None
    return [round(x / norm, 6) for x in out]


def _vector(item, dimensions: int) -> list[float]:
    """Deterministic and meaningful for text: paraphrases score high by cosine, unrelated
    texts low. Token arrays and texts without a word get a hash of their bytes."""
    if isinstance(item, str):
        vector = _text_vector(item, dimensions)
        if vector is not None:
            return vector
    seed = item.encode() if isinstance(item, str) else orjson.dumps(item)
    out: list[float] = []
    counter = 0
    while len(out) < dimensions:
        digest = hashlib.blake2b(seed, digest_size=32, salt=counter.to_bytes(16, "little")).digest()
        out += [round(b / 127.5 - 1.0, 6) for b in digest]
        counter += 1
    return out[:dimensions]


def _input_tokens(item) -> int:
    if isinstance(item, str):
        return estimate_tokens(item)
    return max(1, len(item)) if isinstance(item, list) else 1


def embeddings(body: dict, model: str) -> dict:
    dims = body.get("dimensions")
    dims = dims if isinstance(dims, int) and 0 < dims <= 4096 else EMBEDDING_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for index, item in enumerate(_inputs(body.get("input", ""))):
        vector = _vector(item, dims)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        tokens += _input_tokens(item)
        data.append({"object": "embedding", "index": index, "embedding": vector})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class EchoProvider(Provider):
    async def chat(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        result = completion(body, model)
        if self.pool is not None:   # a key pool on echo: its picks, limits and metrics, offline
            raw = orjson.dumps(result)
            await self.pool.serve_offline(self, body, raw)
            return UpstreamResponse(200, raw, result)
        return UpstreamResponse(200, orjson.dumps(result), result)

    async def chat_stream(self, body: dict, model: str, timeout: float) -> UpstreamStream:
        events = [b"data: " + orjson.dumps(e) + b"\n\n" for e in stream_events(body, model)]
        return UpstreamStream(_replay(events))

    async def embeddings(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        result = embeddings(body, model)
        return UpstreamResponse(200, orjson.dumps(result), result)


async def _replay(events: list[bytes]):
    for event in events:
        yield event
    yield DONE
