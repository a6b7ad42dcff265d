"""The connection guard under the ASGI app: caps on request heads, read timeouts, a connection cap.

uvicorn's httptools protocol buffers a request head without bound and never times out a slow
one. This subclass counts head bytes and headers as they are parsed (431 past the caps), gives a
head and a body a deadline each (408, then the connection is closed), and answers 503 to the
requests of a connection opened above the connection cap. Idle keep-alive connections are closed
by uvicorn's own `timeout_keep_alive`.
"""
from __future__ import annotations

import http
from dataclasses import dataclass

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import error_body

# After a refusal the connection is half-closed and what the client still sends is read and
# dropped for a moment, so that it reads the answer instead of a reset.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1 << 20
# Head and body deadlines are checked this often by one timer per event loop (not a timer a
# request): a timeout fires up to this much after its time.
SWEEP_SECONDS = 0.25
# The ASGI scope key under which the connection's _HeadWithBody is offered to the app.
HEAD_WITH_BODY = "edgerules.head_with_body"


@dataclass(frozen=True, slots=True)
class Limits:
    max_header_line: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000


class GatewayConfig(uvicorn.Config):
    """uvicorn's Config carrying the Limits to every worker process (it is pickled to them)."""

    def __init__(self, app, *, limits: Limits, **kwargs):
        super().__init__(app, **kwargs)
        self.limits = limits


class _Refusal(Exception):
    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class GuardedHttpProtocol(HttpToolsProtocol):
    def __init__(self, config, server_state, app_state, _loop=None):
        super().__init__(config, server_state, app_state, _loop)
        self.limits: Limits = getattr(config, "limits", None) or Limits()
        self._in_head = True        # reading a request head (or waiting for the next one)
        self._line = 0              # bytes of the head line not finished yet
        self._head_bytes = 0
        self._header_count = 0
        self._ends = 0              # heads and messages ended so far
        self._deadline_at = None    # loop time of the head's or the body's deadline (or the linger's end)
        self._on_deadline = None
        self._deadlines = _Deadlines.of(server_state, self.loop)
        self._writer = None
        self._closing = False       # refused: input is dropped until the connection closes
        self._dropped = 0

    # ---- connection --------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._writer = _HeadWithBody(transport)
        if len(self.connections) > self.limits.max_connections:
            self.app = self._at_capacity
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)
        writer = self._writer
        if writer is not None and writer.on_lost is not None:
            on_lost, writer.on_lost = writer.on_lost, None
            on_lost()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        ends = self._ends
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refusal):
                self._refuse(exc.__context__)
            else:
                self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        if not self._in_head:
            return
        if self._ends != ends:
            # A head or a message ended inside this read: where the next head starts is unknown,
            # so its unfinished line is counted from the next read on (one read is bounded).
            self._line = 0
            return
        # A head line, or a head, that never ends is refused here: on_header would never see it.
        newline = data.rfind(b"\n")
        line = self._line = len(data) - newline - 1 if newline >= 0 else self._line + len(data)
        limits = self.limits
        if line > limits.max_header_line:
            self._refuse(_Refusal(431, f"a request header line is longer than {limits.max_header_line} bytes",
                                  "header_line_too_large"))
        elif self._head_bytes + line > limits.max_header_bytes:
            self._refuse(_too_many_bytes(limits))

    # ---- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[HEAD_WITH_BODY] = self._writer
        self._in_head, self._head_bytes, self._header_count = True, 0, 0
        if self._deadline_at is None:
            self._arm(self.limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_header_line:
            raise _Refusal(414, f"the request line is longer than {self.limits.max_header_line} bytes",
                           "request_line_too_large")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        size = len(name) + len(value) + 4    # "name: value\r\n"
        self._header_count += 1
        self._head_bytes += size
        if size > limits.max_header_line:
            raise _Refusal(431, f"a request header line is longer than {limits.max_header_line} bytes",
                           "header_line_too_large")
        if self._header_count > limits.max_headers:
            raise _Refusal(431, f"the request has more than {limits.max_headers} headers", "too_many_headers")
        if self._head_bytes > limits.max_header_bytes:
            raise _too_many_bytes(limits)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._ends += 1
        self._disarm()
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:
            cycle.transport = self._writer
        self._arm(self.limits.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._line = True, 0
        self._ends += 1
        super().on_message_complete()

    # ---- deadlines ---------------------------------------------------------------------------

    def _arm(self, seconds: float, handler) -> None:
        self._deadline_at = self.loop.time() + seconds
        self._on_deadline = handler
        self._deadlines.add(self)

    def _disarm(self) -> None:
        if self._deadline_at is not None:
            self._deadline_at = self._on_deadline = None
            self._deadlines.armed.discard(self)

    def _head_timed_out(self) -> None:
        self._refuse(_Refusal(408, f"the request headers did not arrive within {self.limits.header_timeout:g}s",
                              "header_timeout"))

    def _body_timed_out(self) -> None:
        cycle = self.cycle
        answer = not cycle.response_started
        cycle.disconnected = True    # the app sees a disconnect; whatever it still sends goes nowhere
        self._refuse(_Refusal(408, f"the request body did not arrive within {self.limits.body_timeout:g}s",
                              "body_timeout"), answer)

    # ---- refusals ----------------------------------------------------------------------------

    def _refuse(self, refusal: _Refusal, answer: bool | None = None) -> None:
        """Answer (unless a response is under way), half-close, and drop input for a moment."""
        if self._closing or self.transport.is_closing():
            return
        self._closing = True
        self._disarm()
        if answer is None:
            answer = self.cycle is None or self.cycle.response_complete
        if answer:
            self.transport.write(self._raw_answer(refusal))
        self.logger.info("refused a request: %s", refusal.message)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.flow.resume_reading()
            self._arm(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _bad_request(self) -> None:
        self.logger.warning("Invalid HTTP request received.")
        self._refuse(_Refusal(400, "the request is not valid HTTP/1.1", "invalid_http"))

    def _raw_answer(self, refusal: _Refusal) -> bytes:
        body = error_body(refusal.status, refusal.message, code=refusal.code)
        head = [f"HTTP/1.1 {refusal.status} {http.HTTPStatus(refusal.status).phrase}\r\n".encode()]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                    % len(body))
        return b"".join(head) + body

    async def _at_capacity(self, scope, receive, send) -> None:
        message = (f"the gateway is at its limit of {self.limits.max_connections} open connections; "
                   "retry shortly")
        body = error_body(503, message, type="server_error", code="too_many_connections")
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _HeadWithBody:
    """The transport a connection's request cycles write to. uvicorn writes a response's head and
    its body apart: two sends, two packets, two wake-ups of the client. An app that is about to
    send a whole answer calls hold(): the head then waits for the body and both leave in one send.
    Offered to the app in the scope (HEAD_WITH_BODY); everything else passes straight through."""

    __slots__ = ("transport", "_held", "_holding", "on_lost")

    def __init__(self, transport):
        self.transport = transport
        self._held = None
        self._holding = False
        self.on_lost = None   # called once when the connection is lost (a request waiting for its upstream)

    def hold(self) -> None:
        """The next write (the head) waits for the one after it (the body)."""
        self._holding = True

    def write(self, data) -> None:
        if self._holding:
            held = self._held
            if held is None:
                self._held = data
                return
            self._held, self._holding = None, False
            self.transport.writelines((held, data))
        else:
            self.transport.write(data)

    def flush(self) -> None:
        """Send a head still held (its body never came) and stop holding."""
        held, self._held, self._holding = self._held, None, False
        if held is not None and not self.transport.is_closing():
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def __getattr__(self, name):
        return getattr(self.transport, name)


class _Deadlines:
    """The armed head, body and linger deadlines of one event loop's connections, checked every
    SWEEP_SECONDS by one timer: a loop timer armed and cancelled for each request's head and body
    cost about 3.5 µs a request."""

    def __init__(self, loop):
        self.loop = loop
        self.armed: set = set()
        self._timer = None

    @classmethod
    def of(cls, server_state, loop) -> "_Deadlines":
        found = getattr(server_state, "edgerules_deadlines", None)
        if found is None or found.loop is not loop:
            found = cls(loop)
            server_state.edgerules_deadlines = found
        return found

    def add(self, protocol) -> None:
        self.armed.add(protocol)
        if self._timer is None:
            self._timer = self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        due = [p for p in self.armed if p._deadline_at is not None and p._deadline_at <= now]
        for protocol in due:
            handler = protocol._on_deadline
            protocol._disarm()
            if handler is not None:
                handler()
        self._timer = self.loop.call_later(SWEEP_SECONDS, self._sweep) if self.armed else None


def _too_many_bytes(limits: Limits) -> _Refusal:
    return _Refusal(431, f"the request headers are larger than {limits.max_header_bytes} bytes in all",
                    "headers_too_large")
