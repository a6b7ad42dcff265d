"""The stored request log: one row a request, built when it finishes, enqueued, and written in
batches by a background task; old rows deleted in the background.

The request path only appends to a bounded deque: a full queue drops the row and counts it, so a
slow or broken store never delays or fails a request.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import deque

import orjson

from ..gateway.redact import policy_redactor
from ..gateway.hedge import hedged_attempts
from ..gateway.replay import StreamAssembler
from ..gateway.usage import ask_stream_usage
from ..lang.spec import TOOL_SEPARATOR
from .store import TABLE
from .streamcapture import BY_PATH

log = logging.getLogger("edgerules.gateway")

BATCH = 500                 # rows a write takes at most
GATHER = 0.2                # seconds the writer waits for more rows before a write
RETENTION_EVERY = 60.0      # seconds between two retention passes
_ID_MAX = 128
_ID_PREFIX = os.urandom(6).hex()
_ids = itertools.count(1)


def _new_prefix() -> None:
    global _ID_PREFIX, _ids
    _ID_PREFIX, _ids = os.urandom(6).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_new_prefix)   # a forked worker must not repeat its parent's ids
PATHS = {"chat": "/v1/chat/completions", "embeddings": "/v1/embeddings"}


def capture_stream(call) -> None:
    """A streamed answer's log row needs its usage; under `log full` its assembled answer too."""
    ask_stream_usage(call)
    if call.decision.log == "full":
        shape = getattr(call.ingress, "ingress", None)
        capture = BY_PATH.get(getattr(shape, "path", None), StreamAssembler)
        call.tap = call.captured = capture(call.tap)


def request_id(given: str | None) -> str:
    """The client's x-request-id when it is sane (1-128 printable ASCII characters), else a new one."""
    if given and len(given) <= _ID_MAX and given.isascii() and given.isprintable() and given.strip() == given:
        return given
    # A random prefix per process and a counter: unique across gateways sharing a store, and no
    # system call per request (an id names a request; it is no secret).
    return f"{_ID_PREFIX}{next(_ids):012x}"


def tokens_of(usage) -> tuple[int | None, int | None, int | None]:
    """(input, output, cached) tokens from an OpenAI or Anthropic usage block."""
    if not isinstance(usage, dict):
        return None, None, None
    given = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    out = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    details = usage.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else _int(
        usage.get("cache_read_input_tokens"))
    return given, out, cached


def _int(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def cost_of(call, status: int) -> float | None:
    """USD from the answering provider's `price` table; None when the model has no price (its usage
    is then never parsed for this). A cache hit and a failed request cost nothing."""
    if call.cache in ("HIT", "HIT-SEMANTIC") or status != 200:
        return 0.0
    provider_name, _, model = call.route.partition("/")
    provider = call.live.providers.get(provider_name)
    price = provider.spec.price(model) if provider is not None else None
    if price is None:
        return None
    given, out, _ = tokens_of(call.usage)
    return ((given or 0) * price.input + (out or 0) * price.output) / 1_000_000


def _json(value) -> str | None:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return None


def build_row(call, status: int, seconds: float, now: float) -> tuple:
    """The row of one finished request, in store.COLUMNS order."""
    d = call.decision
    route = call.route
    given, out, cached = tokens_of(call.usage)
    cost = call.cost if call.cost is not None else cost_of(call, status)
    if call.hedged:   # cancelled hedge attempts were sent their prompt: paid too
        extra = [h["cost"] for h in hedged_attempts(call) if h["cost"] is not None]
        cost = (cost or 0.0) + sum(extra) if extra else cost
    request_body = answer_body = None
    if d is not None and d.log == "full":
        redactor = policy_redactor(call.live.policy)
        request_body = redactor.text(_json(call.body) or "null")
        answer_body = _answer_text(call, redactor)
    ttft = call.ttft if call.ttft is not None else (seconds if status == 200 else None)
    return (call.request_id, now - seconds, call.kind, call.key, call.path or PATHS.get(call.kind, ""),
            str(call.body.get("model") or ""), route, route.partition("/")[0] if route else "", status,
            call.error_code or None, call.error or None, call.attempts, call.cache,
            ",".join(d.matched) if d else "", _tags(d.tags) if d else "", call.live.policy.version,
            round(seconds * 1000, 3), round(ttft * 1000, 3) if ttft is not None else None,
            given, out, cached, cost, request_body, answer_body)


def _tags(tags) -> str:
    # ",a,b," so that one tag is found with LIKE '%,a,%' by both stores
    return "," + ",".join(tags) + "," if tags else ""


def _answer_text(call, redactor) -> str | None:
    captured = call.captured
    if captured is None:
        return None
    if isinstance(captured, (bytes, bytearray)):
        return redactor.text(bytes(captured).decode("utf-8", "replace"))
    try:
        return redactor.text(_json(captured.completion()) or "null")   # an assembled stream
    except Exception:
        return None


def failure_row(rid: str, path: str, status: int, code: str | None, message: str, policy: str, now: float) -> tuple:
    """The row of a request refused before it had a decision (no key, a malformed body)."""
    return (rid, now, "embeddings" if path.endswith("/embeddings") else "chat", "", path, "", "", "",
            status, code, message, 0, "BYPASS", "", "", policy, 0.0, None, None, None, None, 0.0, None, None)


# A tool call's outcome (the access line's decision and status) as an HTTP-like status and an
# error code, so that usage counts errors and `logs --status 4xx` finds refusals as for models.
_TOOL_OUTCOMES = {("unknown", "refused"): (404, "tool_not_found"), ("denied", "refused"): (403, "denied_by_policy"),
                  ("limited", "refused"): (429, "rate_limit_exceeded"), ("call", "ok"): (200, None),
                  ("call", "error"): (200, "tool_error"), ("call", "failed"): (502, "upstream_error"),
                  ("call", "unavailable"): (503, "circuit_open")}


def tool_row(entry: dict, decision, arguments: dict, redactor, now: float) -> tuple:
    """The row of one MCP tool call, from the access-log entry the tool gateway built (store.COLUMNS
    order): the tool as `model` (SERVER__TOOL), its server as `route`; no cache, tokens or cost.
    Arguments only under `log full`, redacted; the caller's headers are never stored."""
    status, code = _TOOL_OUTCOMES.get((entry.get("decision"), entry.get("status")), (500, "internal_error"))
    seconds = entry.get("ms", 0.0) / 1000
    server = entry.get("server", "")
    request_body = None
    if decision is not None and decision.log == "full":
        body = _json(arguments)
        request_body = redactor.text(body) if body is not None else None
    return (request_id(None), now - seconds, "tool", entry.get("key") or "", "/mcp",
            f"{server}{TOOL_SEPARATOR}{entry.get('tool', '')}", server, "", status, code, entry.get("error"),
            entry.get("attempts", 0), None, ",".join(decision.matched) if decision is not None else "",
            _tags(decision.tags) if decision is not None else "", entry.get("policy", ""),
            round(entry.get("ms", 0.0), 3), None, None, None, None, None, request_body, None)


class RequestLog:
    """The bounded queue, its writer and the retention task, for one store."""

    def __init__(self, store, *, queue: int = 10_000, retention: float = 30 * 86400.0, max_rows: int = 0):
        self.store = store
        self.limit = queue
        self.retention = retention
        self.max_rows = max_rows
        self.rows: deque = deque()
        self.dropped = 0            # rows refused by a full queue, or lost to a failed write
        self.written = 0
        self.failed_writes = 0
        self._wake = asyncio.Event()    # a row is waiting
        self._full = asyncio.Event()    # a whole batch is waiting: write now
        self._closing = False
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write_loop()), loop.create_task(self._retention_loop())]

    def add(self, row: tuple) -> None:
        if len(self.rows) >= self.limit:
            self.dropped += 1
            return
        rows = self.rows
        rows.append(row)
        if not self._wake.is_set():
            self._wake.set()
        elif len(rows) >= BATCH and not self._full.is_set():
            self._full.set()

    def status(self) -> dict:
        pid = getattr(self.store, "writer_pid", None)
        return {"store": getattr(self.store, "name", ""), "queued": len(self.rows), "queue_limit": self.limit,
                "written": self.written, "dropped": self.dropped, "failed_writes": self.failed_writes,
                "retention_seconds": self.retention, "max_rows": self.max_rows or None,
                "writer_pid": pid() if pid is not None else None}

    def metrics_text(self) -> str:
        """The log's own series, in the Prometheus text format."""
        return ("# HELP edgerules_request_log_dropped_total Request log rows dropped: queue full or a failed write.\n"
                "# TYPE edgerules_request_log_dropped_total counter\n"
                f"edgerules_request_log_dropped_total {self.dropped}\n"
                "# HELP edgerules_request_log_written_total Request log rows written to the store.\n"
                "# TYPE edgerules_request_log_written_total counter\n"
                f"edgerules_request_log_written_total {self.written}\n"
                "# HELP edgerules_request_log_queued Request log rows waiting to be written.\n"
                "# TYPE edgerules_request_log_queued gauge\n"
                f"edgerules_request_log_queued {len(self.rows)}\n")

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing:
                # Gather rows for a moment: one transaction and one thread hop for many requests,
                # not one a request (which cost a quarter of the throughput at 32 connections).
                try:
                    await asyncio.wait_for(self._full.wait(), GATHER)
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()
            self._full.clear()
            await self._drain()
            if self._closing:
                return

    async def _drain(self) -> None:
        """Write the rows queued now, in batches; rows that come meanwhile wait for the next gather."""
        rows = self.rows
        left = len(rows)
        while left > 0 and rows:
            batch = [rows.popleft() for _ in range(min(BATCH, len(rows)))]
            left -= len(batch)
            try:
                await self.store.write(batch)
                self.written += len(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed_writes += 1
                self.dropped += len(batch)
                log.error("request log: writing %d rows to %s failed: %s", len(batch), self.store.name, exc)

    async def _retention_loop(self) -> None:
        while not self._closing:
            try:
                await self.prune(time.time())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("request log: retention on %s failed: %s", self.store.name, exc)
            await asyncio.sleep(RETENTION_EVERY)

    async def prune(self, now: float) -> int:
        """Delete rows older than the retention, then the oldest beyond max_rows; returns how many."""
        deleted = await self.store.execute(f"DELETE FROM {TABLE} WHERE ts < ?", (now - self.retention,))
        if self.max_rows:
            rows = await self.store.fetch(f"SELECT seq FROM {TABLE} ORDER BY seq DESC LIMIT 1 OFFSET ?",
                                          (self.max_rows,))
            if rows:
                deleted += await self.store.execute(f"DELETE FROM {TABLE} WHERE seq <= ?", (rows[0]["seq"],))
        return max(deleted, 0)

    async def close(self) -> None:
        """Write everything queued, then close the store."""
        self._closing = True
        for task in self._tasks[1:]:
            task.cancel()
        self._wake.set()
        self._full.set()
        if self._tasks:
            try:
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), 30.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._tasks[0].cancel()
            while self.rows:
                await self._drain()   # rows added while the last batch was written
        await self.store.close()


async def open_request_log(uri: str, *, queue: int, retention: float, max_rows: int,
                           required: bool = True, writer: str = "auto") -> RequestLog | None:
    """The running log, None for `none`; a store that cannot be opened stops the gateway, unless
    it is the default one (`required` false): then the gateway runs without a log and says why."""
    from .store import StoreError, open_store

    try:
        store = await open_store(uri, writer)
    except StoreError as exc:
        if required:
            raise
        log.warning("%s; the gateway runs without a request log (set --log-store)", exc)
        return None
    if store is None:
        return None
    request_log = RequestLog(store, queue=queue, retention=retention, max_rows=max_rows)
    request_log.start()
    return request_log
