"""The semantic cache (`cache semantic 0.95 ttl 1h using P/M`): a prompt is embedded through a
declared provider's embeddings endpoint and compared with the prompts whose answers the exact
cache holds; the nearest one of the same model and scope is served when its cosine similarity
reaches the threshold. The vectors are one contiguous float32 matrix, so a lookup is one
matrix-vector product; rows are bounded in entries and bytes, expire with the rule's TTL and the
least recently used go first. An embedding that fails never fails the request: the cache is
bypassed (logged once per cause, counted)."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time

# One BLAS thread: a lookup is one small matrix-vector product on the event loop's thread, and
# OpenBLAS' thread pool made it 20-100x slower on a busy machine (0.3 ms -> 27 ms at 10k rows).
# Effective when numpy is first imported here, as in the gateway (nothing else there imports it).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402  (after the thread settings above)
import orjson
from cachetools import TTLCache

from .providers.base import ProviderError
from .providers.echo import message_text

log = logging.getLogger("edgerules.gateway")

DIMENSIONS = 256        # asked of the embeddings model (text-embedding-3-*, Gemini and echo honour it)
EMBED_TIMEOUT = 2.0     # seconds at most an embedding may add to a request (less if its deadline is nearer)
ROW_OVERHEAD = 48       # bytes of a row besides its vector: group, expiry, last use, key slot
PENDING_SECONDS = 600.0  # how long a MISS's vector waits for its answer to be stored
_FIRST_ROWS = 1024
# Fields that do not change the answer, and the prompt itself (compared by meaning, not bytes).
_NOT_IN_GROUP = frozenset({"stream", "stream_options", "user", "messages"})


def prompt_text(body: dict) -> str:
    """The messages' text, system included, one message a line, whitespace collapsed."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    lines = (" ".join(message_text(m.get("content")).split()) for m in messages if isinstance(m, dict))
    return "\n".join(line for line in lines if line)


def scope_group(call, using: str) -> int:
    """A 63-bit digest of what must match besides the prompt: the route, the `by` values, the key
    and user (unless `shared`), every other field of the body, and the embeddings model."""
    body = {k: v for k, v in call.body.items() if k not in _NOT_IN_GROUP}
    target = call.target.to_dict(call.decision.route_by) if call.target is not None else None
    scope = None if call.decision.cache.shared else [call.key, call.body.get("user")]
    canonical = orjson.dumps([call.kind, target, list(call.decision.cache_by), scope, body, using],
                             option=orjson.OPT_SORT_KEYS)
    return (int.from_bytes(hashlib.sha256(canonical).digest()[:8], "little") >> 1) or 1   # 0 marks a free row


class VectorIndex:
    """Unit vectors of one dimension count in a float32 matrix that grows up to `capacity` rows;
    each row is the prompt of one exact-cache entry (its key), in one scope group."""

    def __init__(self, dimensions: int, capacity: int):
        self.dimensions, self.capacity = dimensions, max(1, capacity)
        rows = min(self.capacity, _FIRST_ROWS)
        self.vectors = np.zeros((rows, dimensions), np.float32)
        self.groups = np.zeros(rows, np.int64)
        self.expires = np.zeros(rows, np.float64)
        self.used = np.zeros(rows, np.float64)
        self.keys: list[bytes | None] = [None] * rows
        self.slots: dict[bytes, int] = {}
        self.free: list[int] = []
        self.top = 0        # rows [0, top) have been used; free ones have group 0

    def __len__(self) -> int:
        return len(self.slots)

    def nearest(self, group: int, vector: np.ndarray, threshold: float, now: float) -> tuple[bytes, float] | None:
        """(the exact-cache key, its similarity) of the closest live row of the group, if close enough."""
        n = self.top
        if n == 0:
            return None
        sims = self.vectors[:n] @ vector
        sims[(self.groups[:n] != group) | (self.expires[:n] <= now)] = -2.0
        row = int(sims.argmax())
        similarity = float(sims[row])
        if similarity < threshold:
            return None
        self.used[row] = now
        return self.keys[row], min(similarity, 1.0)

    def add(self, group: int, vector: np.ndarray, key: bytes, expires: float, now: float) -> None:
        row = self.slots.get(key)
        if row is None:
            row = self._take(now)
            self.slots[key], self.keys[row] = row, key
        self.vectors[row] = vector
        self.groups[row], self.expires[row], self.used[row] = group, expires, now

    def remove(self, key: bytes) -> None:
        row = self.slots.pop(key, None)
        if row is not None:
            self.groups[row], self.expires[row], self.keys[row] = 0, 0.0, None
            self.free.append(row)

    def _take(self, now: float) -> int:
        if self.free:
            return self.free.pop()
        if self.top == len(self.keys) and self.top < self.capacity:
            self._grow(min(self.capacity, 2 * self.top))
        if self.top < len(self.keys):
            self.top += 1
            return self.top - 1
        # Full: an expired row if there is one, else the least recently used.
        row = int(self.expires.argmin())
        if self.expires[row] > now:
            row = int(self.used.argmin())
        self.remove(self.keys[row])
        return self.free.pop()

    def _grow(self, rows: int) -> None:
        extra = rows - len(self.keys)
        self.vectors = np.concatenate([self.vectors, np.zeros((extra, self.dimensions), np.float32)])
        self.groups = np.concatenate([self.groups, np.zeros(extra, np.int64)])
        self.expires = np.concatenate([self.expires, np.zeros(extra, np.float64)])
        self.used = np.concatenate([self.used, np.zeros(extra, np.float64)])
        self.keys += [None] * extra


def unit_vector(data) -> np.ndarray | None:
    """An embeddings answer's first vector, L2-normalized; None when it is not a usable vector."""
    vector = np.asarray(data["data"][0]["embedding"], dtype=np.float32)
    if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all():
        return None
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else None


class SemanticCache:
    """The semantic path of a ResponseCache: its entries hold the answers, this holds the vectors."""

    def __init__(self, cache, max_entries: int, max_bytes: int):
        self.cache = cache
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.indexes: dict[int, VectorIndex] = {}   # by dimension count
        self.pending: TTLCache = TTLCache(max_entries, PENDING_SECONDS)   # key -> (index, group, vector)
        self.failing: set[str] = set()   # causes already logged, until an embedding succeeds again

    def index(self, dimensions: int) -> VectorIndex:
        index = self.indexes.get(dimensions)
        if index is None:
            capacity = min(self.max_entries, self.max_bytes // (dimensions * 4 + ROW_OVERHEAD))
            index = self.indexes[dimensions] = VectorIndex(dimensions, capacity)
        return index

    async def serve(self, call, producer, key: bytes, no_store: bool):
        cache, spec = self.cache, call.decision.cache.semantic
        # An exact hit first; an identical request in flight is followed, not embedded again.
        if key in cache.inflight or await cache.peek(key) is not None:
            return await cache.serve_exact(call, producer, key, False, no_store)
        text = prompt_text(call.body)
        vector = await self.embed(call, spec, text) if text else None
        if vector is None:
            response = await cache.serve_exact(call, producer, key, False, no_store)
            if call.cache == "MISS" and text:
                call.cache = "BYPASS"
            return response
        index, now = self.index(vector.size), time.monotonic()
        group = scope_group(call, f"{spec.provider}/{spec.model}")
        found = index.nearest(group, vector, spec.threshold, now)
        if found is not None:
            entry = await cache.peek(found[0])
            if entry is not None:
                response = cache._hit(call, entry)
                call.cache = "HIT-SEMANTIC"
                call.extra_headers["x-edgerules-similarity"] = f"{found[1]:.4f}"
                return response
            index.remove(found[0])   # its answer is gone from the exact cache
        self.pending[key] = (index, group, vector)
        return await cache.serve_exact(call, producer, key, False, no_store)

    def settle(self, key: bytes, entry) -> None:
        """The exact cache stored (entry) or dropped (None) the answer of a semantic MISS."""
        pending = self.pending.pop(key, None)
        if pending is not None and entry is not None:
            index, group, vector = pending
            now = time.monotonic()
            index.add(group, vector, key, now + entry.ttl, now)

    async def embed(self, call, spec, text: str) -> np.ndarray | None:
        provider = call.live.providers.get(spec.provider)
        timeout = min(EMBED_TIMEOUT, call.deadline_at - time.monotonic())
        body = {"model": spec.model, "input": text, "dimensions": DIMENSIONS}
        try:
            if provider is None or timeout <= 0:
                raise TimeoutError
            async with asyncio.timeout(timeout):
                answer = await provider.embeddings(body, spec.model, timeout)
            if answer.status != 200:
                raise ProviderError(answer.status, f"the embeddings endpoint answered {answer.status}")
            vector = unit_vector(answer.json())
            if vector is None:
                raise ValueError("the answer holds no usable vector")
        except Exception as exc:   # never fails the request: the cache is bypassed
            self._failed(call, spec, exc)
            return None
        if self.failing:
            log.info("semantic cache: embeddings through %s/%s answer again", spec.provider, spec.model)
            self.failing.clear()
        return vector

    def _failed(self, call, spec, exc: Exception) -> None:
        call.cache = "BYPASS"
        self.cache.gw.metrics.cache["embedding_error"] += 1
        if isinstance(exc, TimeoutError) or getattr(exc, "kind", "") == "timeout":
            cause = "no answer in time"
        elif isinstance(exc, ProviderError):
            cause = f"status {exc.status}: {exc.message}"
        else:
            cause = type(exc).__name__   # the exception's text may quote the upstream's answer
        what = f"{spec.provider}/{spec.model}: {cause}"
        if what not in self.failing:
            self.failing.add(what)
            log.warning("semantic cache bypassed: embedding through %s (logged once; counted in "
                        "edgerules_cache_lookups_total{result=\"embedding_error\"})", what)
