"""The Provider interface, its answers, its one error type, and the HTTP plumbing the clients share."""
from __future__ import annotations

import asyncio
import functools
import json
import os
from abc import ABC, abstractmethod
from contextlib import aclosing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson
from yarl import URL

from ...lang.spec import ProviderSpec
from ..redact import Redactor
from ..requests import parse_size

DONE = b"data: [DONE]\n\n"
_KINDS = frozenset({"status", "timeout", "connect", "stream", "unsupported"})
_ERROR_BODY_LIMIT = 300   # an HTML error page would otherwise end up whole in the message
_ERROR_READ_LIMIT = 64 * 1024   # bytes of an error answer read; the rest is dropped with the connection
ENV_MAX_UPSTREAM_BODY, DEFAULT_MAX_UPSTREAM_BODY = "EDGERULES_MAX_UPSTREAM_BODY", 32 * 1024 * 1024
ENV_MAX_UPSTREAM_EVENT, DEFAULT_MAX_UPSTREAM_EVENT = "EDGERULES_MAX_UPSTREAM_EVENT", 1024 * 1024
# An answer the gateway must parse whole (to translate it between formats) is parsed in one call
# on the event loop (2 MiB: ~1 ms with orjson and the translation; 4 MiB: ~7 ms); past this it is
# refused rather than stall others.
ENV_MAX_PARSED_ANSWER, DEFAULT_MAX_PARSED_ANSWER = "EDGERULES_MAX_PARSED_ANSWER", 2 * 1024 * 1024
_WHOLE_PARSE_LIMIT = 256 * 1024   # a bigger answer has its usage read from its ends, not a full parse
_USAGE_WINDOW = 64 * 1024


def upstream_limits() -> tuple[int, int]:
    """(bytes of one upstream answer, bytes of one stream event), from the environment."""
    return (parse_size(os.environ.get(ENV_MAX_UPSTREAM_BODY) or str(DEFAULT_MAX_UPSTREAM_BODY)),
            parse_size(os.environ.get(ENV_MAX_UPSTREAM_EVENT) or str(DEFAULT_MAX_UPSTREAM_EVENT)))


def parsed_answer_limit() -> int:
    """Bytes of an upstream answer the gateway parses whole (translation between formats)."""
    return parse_size(os.environ.get(ENV_MAX_PARSED_ANSWER) or str(DEFAULT_MAX_PARSED_ANSWER))


class ProviderError(Exception):
    """An upstream call that did not produce an answer; the gateway maps it to a client error or a retry."""

    def __init__(self, status: int, message: str, *, kind: str = "status",
                 retry_after: float | None = None, provider: str = "", upstream_status: int | None = None):
        if kind not in _KINDS:
            raise ValueError(f"unknown provider error kind '{kind}'")
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after
        self.provider = provider
        self.upstream_status = upstream_status

    @property
    def retryable(self) -> bool:
        """A default for callers without a retry policy: transient failures only."""
        if self.kind in ("timeout", "connect"):
            return True
        return self.kind == "status" and (self.status == 429 or self.status >= 500)

    def __repr__(self) -> str:
        return f"ProviderError({self.status}, {self.message!r}, kind={self.kind!r})"


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    _parsed: dict | None = field(default=None, repr=False, compare=False)

    def json(self) -> dict:
        if self._parsed is None:
            self._parsed = orjson.loads(self.body)
        return self._parsed

    def usage(self) -> dict | None:
        if self._parsed is None and len(self.body) > _WHOLE_PARSE_LIMIT:
            return usage_near_ends(self.body)   # a full parse of a big answer would stall the loop
        usage = self.json().get("usage")
        return usage if isinstance(usage, dict) else None


def usage_near_ends(body: bytes) -> dict | None:
    """The top-level `"usage": {...}` of a big JSON answer, looked for only in its last and first
    64 KiB (where servers put it), so the cost does not grow with the answer."""
    at = body.rfind(b'"usage"', len(body) - _USAGE_WINDOW)
    if at < 0:
        at = body.find(b'"usage"', 0, _USAGE_WINDOW)
    if at < 0:
        return None
    window = body[at + 7:at + 7 + _USAGE_WINDOW].decode("utf-8", "replace")
    rest = window.lstrip()
    if not rest.startswith(":"):
        return None
    rest = rest[1:].lstrip()
    try:
        usage, _ = json.JSONDecoder().raw_decode(rest)
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None


class UpstreamStream:
    """Complete OpenAI SSE events, one or more per iteration (what one network read brought),
    ending with `data: [DONE]`."""

    __slots__ = ("_events", "_release", "_closed")

    def __init__(self, events: AsyncIterator[bytes], release: Callable[[], None] | None = None):
        self._events = events
        self._release = release
        self._closed = False

    def __aiter__(self):
        return self._events

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()
        # A generator never started skips its `finally`, so the connection is released here too.
        if self._release is not None:
            self._release()


class Provider(ABC):
    def __init__(self, spec: ProviderSpec):
        self.spec = spec
        self.redactor = Redactor(spec.secrets())   # the secrets are part of a client's identity: fixed
        self.pool = None
        if spec.key_pool:   # `api_key [...]`: each call picks a key (keypool.py)
            from ..keypool import KeyPool
            self.pool = KeyPool(spec, {})
        self.max_parsed = parsed_answer_limit()

    @abstractmethod
    async def chat(self, body: dict, model: str, timeout: float) -> UpstreamResponse: ...

    @abstractmethod
    async def chat_stream(self, body: dict, model: str, timeout: float) -> UpstreamStream: ...

    @abstractmethod
    async def embeddings(self, body: dict, model: str, timeout: float) -> UpstreamResponse: ...

    async def models(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None

    def error(self, status: int, message: str, **kw) -> ProviderError:
        return ProviderError(status, self.redact(message), provider=self.spec.name, **kw)

    def parseable(self, body: bytes, what: str = "translate") -> bytes:
        """The body, if it is small enough to parse whole on the event loop; else a 502."""
        if len(body) > self.max_parsed:
            raise self.error(502, f"upstream '{self.spec.name}' answered {len(body)} bytes, more than the "
                                  f"{self.max_parsed} the gateway parses to {what} an answer "
                                  f"(EDGERULES_MAX_PARSED_ANSWER)", upstream_status=200)
        return body

    def redact(self, text: str) -> str:
        # Some servers echo the presented key in their 401 message; it must not reach clients or logs.
        return self.redactor.text(text)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; an HTTP-date is ignored."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return max(seconds, 0.0) if seconds == seconds else None


def error_message(body: bytes, reason: str, redactor: Redactor | None = None) -> str:
    """The upstream's own message from an OpenAI or Anthropic error body, else a short excerpt;
    with a redactor, redacted before anything is cut."""
    if redactor:
        body = redactor.bytes(body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and err:
            return err
        if data.get("message"):
            return str(data["message"])
        if isinstance(data.get("detail"), str):
            return data["detail"]
    text = body.decode("utf-8", "replace").strip()
    return text[:_ERROR_BODY_LIMIT] if text else reason


@functools.lru_cache(maxsize=256)
def _attempt_timeout(seconds: float, stream: bool) -> aiohttp.ClientTimeout:
    """aiohttp's own timer: measured at ~0 us a request where asyncio.timeout() cost ~9 us.

    A plain call is bounded as a whole (connect, send, headers, body). A stream is bounded up to
    its headers and then by the longest silence between two reads.
    """
    if stream:
        return aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)
    return aiohttp.ClientTimeout(total=seconds)


class HttpProvider(Provider):
    """A provider over HTTP: one pooled aiohttp session, created inside the running event loop."""

    def __init__(self, spec: ProviderSpec, base_url: str, headers: dict[str, str]):
        super().__init__(spec)
        self.base_url = base_url.rstrip("/")
        self.headers = {"content-type": "application/json", "accept": "application/json", **headers,
                        **dict(spec.headers)}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.max_body, self.max_event = upstream_limits()
        self._urls: dict[str, URL] = {}
        if self.pool is not None:   # the keys in this format's own headers; post() picks one per call
            self.pool = type(self.pool)(spec, self.headers)
            self.post = self._post_pooled

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        # A session is bound to its loop; a provider reused from another loop (tests) gets a fresh one.
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=1024, keepalive_timeout=30, ttl_dns_cache=300)
            # No cookie jar: a cookie one client's answer set must never ride along on another
            # client's request (and filtering the jar cost every request a few µs).
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                                  timeout=aiohttp.ClientTimeout(total=None),
                                                  cookie_jar=aiohttp.DummyCookieJar())
            self._loop = loop
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def passthrough(self, path: str, payload: dict, timeout: float, *, stream: bool = False):
        """A body already in this provider's own format (an ingress of the same format) POSTed to
        `path` with the provider's auth: the answer's bytes, or for a stream the open response.
        A format whose URLs are built differently overrides this."""
        return await self.post(path, payload, timeout, stream=stream)

    async def _post_pooled(self, path: str, payload: dict, timeout: float, *, stream: bool = False):
        """One attempt as the caller sees it: a key refused by the upstream (429, 401, 403) is
        cooled down and the next key tried, within the same timeout, until one answers or none is left."""
        pool, tried, last = self.pool, set(), None
        deadline = asyncio.get_running_loop().time() + timeout
        while (i := await pool.take(tried)) is not None:
            tried.add(i)
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:   # the refused keys took the attempt's whole time
                raise self.error(504, f"upstream '{self.spec.name}' did not answer within {timeout:g}s",
                                 kind="timeout")
            try:
                result = await HttpProvider.post(self, path, payload, left, stream=stream, headers=pool.headers[i])
            except ProviderError as exc:
                if exc.kind == "status" and (exc.upstream_status or exc.status) in (401, 403, 429):
                    pool.cool(i, exc)
                    last = exc
                    continue
                pool.count(i, exc.kind if exc.kind != "status" else str(exc.status))
                raise
            await pool.spent(i, payload, result)
            return result
        raise pool.exhausted(self, last)

    async def post(self, path: str, payload: dict, timeout: float, *, stream: bool = False,
                   headers: dict[str, str] | None = None):
        """POST and wait for a 2xx answer: its bytes, or for a stream the open response. A provider
        with a key pool has _post_pooled() as its `post`, which calls this with a key's headers."""
        url = self.base_url + path
        try:
            data = orjson.dumps(payload)
        except orjson.JSONEncodeError as exc:   # e.g. an integer beyond 64 bits
            raise self.error(400, f"cannot send the request to upstream '{self.spec.name}': {exc}",
                             kind="unsupported") from None
        try:
            resp = await self.session().post(self._url(path, url), data=data, headers=headers or self.headers_for(url, data),
                                             allow_redirects=False,
                                             timeout=_attempt_timeout(timeout, stream))
            if resp.status >= 300:
                body = await self.read_body(resp, _ERROR_READ_LIMIT, cut=True)
                raise self.status_error(resp.status, body, resp.headers.get("retry-after"),
                                        resp.reason or "")
            if stream:
                return resp
            return await self.read_body(resp, self.max_body)
        except ProviderError:
            raise
        except TimeoutError:
            raise self.error(504, f"upstream '{self.spec.name}' did not answer within {timeout:g}s",
                             kind="timeout") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
            raise self.error(502, f"cannot connect to upstream '{self.spec.name}': {reason}",
                             kind="connect") from None
        except aiohttp.ClientError as exc:
            raise self.error(502, f"upstream '{self.spec.name}' closed the connection before answering "
                                  f"({type(exc).__name__})", kind="connect") from None

    def _url(self, path: str, url: str) -> URL:
        """The URL of a path, built once: `encoded`, so it goes out exactly as built (and, for
        bedrock, as signed), and a memo because parsing costs more than the lookup."""
        found = self._urls.get(path)
        if found is None:
            if len(self._urls) >= 256:
                self._urls.clear()   # paths with model names in them come from clients: bounded
            found = self._urls[path] = URL(url, encoded=True)
        return found

    def headers_for(self, url: str, data: bytes) -> dict[str, str]:
        """The headers of one POST; a provider that signs each request (bedrock) overrides it."""
        return self.headers

    async def read_body(self, resp: aiohttp.ClientResponse, limit: int, *, cut: bool = False) -> bytes:
        """The answer's bytes, never more than `limit` in memory: past it a 502 (or, with `cut`,
        the first `limit` bytes); either way the connection is closed, not drained."""
        length = resp.content_length
        if length is not None and length <= limit:
            return await resp.read()   # the parser stops at Content-Length
        chunks, size = [], 0
        if length is None or cut:
            async for chunk in resp.content.iter_any():
                size += len(chunk)
                if size > limit:
                    chunks.append(chunk[:limit - size])
                    break
                chunks.append(chunk)
            else:
                resp.release()
                return b"".join(chunks)
        resp.close()
        if cut:
            return b"".join(chunks)
        raise self.error(502, f"upstream '{self.spec.name}' answered with more than {limit} bytes "
                              f"(EDGERULES_MAX_UPSTREAM_BODY)", upstream_status=resp.status)

    async def models(self) -> list[str]:
        data = await self.get_json("/models", min(self.spec.timeout, 10.0))
        items = data.get("data") if data else None
        if not isinstance(items, list):
            return []
        return [m["id"] for m in items if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def get_json(self, path: str, timeout: float) -> dict | None:
        try:
            async with asyncio.timeout(timeout):
                async with self.session().get(self.base_url + path, headers=self.headers) as resp:
                    if resp.status != 200:
                        return None
                    data = orjson.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def status_error(self, status: int, body: bytes, retry_after: str | None, reason: str) -> ProviderError:
        message = error_message(body, reason, self.redactor)
        return self.error(status, f"upstream '{self.spec.name}' answered {status}: {message}",
                          retry_after=parse_retry_after(retry_after), upstream_status=status)

    def check_answer(self, body: bytes) -> None:
        """A cheap look that a 200 answer is a JSON object and not an error in disguise; it is
        parsed only if someone asks."""
        head = body[:64].lstrip()
        if not head[:1] == b"{":
            raise self.error(502, f"upstream '{self.spec.name}' answered 200 with a body that is not a "
                                  f"JSON object", upstream_status=200)
        # Some proxies answer 200 with an error body instead of an error status.
        if head.startswith((b'{"error"', b'{ "error"')):
            raise self.error(502, f"upstream '{self.spec.name}' answered 200 with an error: "
                                  f"{error_message(body, 'unknown error', self.redactor)}",
                             upstream_status=200)

    def parse_answer(self, body: bytes) -> dict:
        self.parseable(body)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise self.error(502, f"upstream '{self.spec.name}' answered 200 with a body that is not a "
                                  f"JSON object", upstream_status=200)
        # Some proxies answer 200 with an error body instead of an error status.
        if data.get("type") == "error" or ("error" in data and "choices" not in data and "data" not in data):
            raise self.error(502, f"upstream '{self.spec.name}' answered 200 with an error: "
                                  f"{error_message(body, 'unknown error', self.redactor)}",
                             upstream_status=200)
        return data

    def events_of(self, resp: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
        """The open response of a stream request, unless the upstream answered JSON instead of events."""
        if resp.content_type == "application/json":
            resp.close()
            raise self.error(502, f"upstream '{self.spec.name}' answered a stream request with JSON "
                                  f"instead of events", upstream_status=resp.status)
        return resp

    async def sse_data(self, resp: aiohttp.ClientResponse, timeout: float) -> AsyncIterator[bytes]:
        """The `data` payload of each SSE event of a response; comment-only events are skipped."""
        async with aclosing(self.sse_batches(resp, timeout)) as batches:
            async for batch in batches:
                for data in batch:
                    yield data

    async def sse_batches(self, resp: aiohttp.ClientResponse, timeout: float) -> AsyncIterator[list[bytes]]:
        """The `data` payloads of the complete events each network read brought, as one list:
        a relay can then forward them in one write instead of one write per event.

        Linear in the stream: each read is searched once and the pending bytes live in one
        bytearray; an event longer than EDGERULES_MAX_UPSTREAM_EVENT or a stream longer than
        EDGERULES_MAX_UPSTREAM_BODY ends it with an error.
        """
        pending = bytearray()
        cr = False          # the last read ended in "\r": its "\n" may come with the next one
        total = 0
        finished = False
        try:
            async for chunk in resp.content.iter_any():
                total += len(chunk)
                if total > self.max_body:
                    raise self._too_long("streamed more than", self.max_body, "EDGERULES_MAX_UPSTREAM_BODY")
                if cr or b"\r" in chunk:
                    chunk, cr = _lf_only(chunk, cr)
                batch = self._split_events(pending, chunk)
                if len(pending) > self.max_event:
                    raise self._too_long("sent an event longer than", self.max_event,
                                         "EDGERULES_MAX_UPSTREAM_EVENT")
                if batch:
                    yield batch
            rest = pending.strip(b"\r\n")
            if rest:
                data = event_data(bytes(rest))
                if data is not None:
                    yield [data]
            finished = True
        except TimeoutError:
            raise self.error(502, f"upstream '{self.spec.name}' sent nothing for {timeout:g}s mid-stream",
                             kind="stream") from None
        except aiohttp.ClientError as exc:
            raise self.error(502, f"upstream '{self.spec.name}' dropped the stream "
                                  f"({type(exc).__name__})", kind="stream") from None
        finally:
            # Reuse the connection only after a complete body; otherwise stop the upstream generating.
            if finished:
                resp.release()
            else:
                resp.close()

    def _split_events(self, pending: bytearray, chunk: bytes) -> list[bytes]:
        """The data of the events completed by `chunk`; what is left of it stays in `pending`.
        Only the new bytes are searched (plus one before them: a "\n\n" may straddle)."""
        if pending:
            scan = len(pending) - 1
            pending += chunk
            text = pending
        else:
            scan, text = 0, chunk   # the common case: whole events in one read, no copy
        batch, start = [], 0
        while (end := text.find(b"\n\n", scan)) >= 0:
            if end - start > self.max_event:
                raise self._too_long("sent an event longer than", self.max_event, "EDGERULES_MAX_UPSTREAM_EVENT")
            data = event_data(bytes(text[start:end]) if text is pending else text[start:end])
            if data is not None:
                batch.append(data)
            start = scan = end + 2
        if text is pending:
            del pending[:start]
        elif start < len(chunk):
            pending += chunk[start:] if start else chunk
        return batch

    def _too_long(self, what: str, limit: int, setting: str) -> ProviderError:
        return self.error(502, f"upstream '{self.spec.name}' {what} {limit} bytes ({setting})", kind="stream")


def _lf_only(chunk: bytes, cr: bool) -> tuple[bytes, bool]:
    """CRLF line ends as LF, holding back a final "\r" whose "\n" may be in the next read."""
    if cr:
        chunk = b"\r" + chunk
    cr = chunk.endswith(b"\r")
    if cr:
        chunk = chunk[:-1]
    return chunk.replace(b"\r\n", b"\n"), cr


def event_data(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None
