"""One request through the gateway: decide -> limits -> cache -> route -> provider, with retries."""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator

from starlette.responses import Response, StreamingResponse

from ..lang.spec import Single, Target
from .errors import GatewayError, error_body
from .providers import ProviderError, UpstreamResponse
from .redact import policy_redactor
from .streamredact import StreamRedactor
from .retry import is_retryable, retry_delay
from .hedge import race
from .router import HedgePlan, plan, resolve_model

if TYPE_CHECKING:
    from ..lang.decision import Decision
    from .state import Gateway, Live

log = logging.getLogger("edgerules.gateway")

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# A request still waiting for its upstream after this long starts watching for its client leaving:
# most answers come sooner, so most requests never pay for the watcher's task.
DISCONNECT_WATCH_AFTER = 0.05
# Taps parse each event (~5-25 us): a read bigger than this is tapped in slices of this many events.
TAP_SLICE, TAP_SLICE_EVENTS = 64 * 1024, 128
CLIENT_GONE = 499   # nginx's status for a client that closed the connection first
PASSED_ON = {429: "upstream_rate_limited", 503: "upstream_unavailable"}
# A JSON answer larger than this is sent in slices of this size, each its own step of the event
# loop: one write of a 30 MB body would hold every other request for tens of milliseconds.
SEND_SLICE = 1024 * 1024


class SlicedResponse(Response):
    """A Response whose body goes out SEND_SLICE bytes at a time (same headers, same length)."""

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body, size = memoryview(self.body), len(self.body)
        for start in range(0, size, SEND_SLICE):
            end = start + SEND_SLICE
            await send({"type": "http.response.body", "body": bytes(body[start:end]), "more_body": end < size})
            await asyncio.sleep(0)    # let other requests run between slices


@dataclass(slots=True)
class Call:
    """One request on its way through the gateway."""

    kind: str                      # chat | embeddings
    body: dict
    stream: bool
    key: str
    live: "Live"
    decision: "Decision"
    target: Target
    started: float                 # monotonic
    deadline_at: float             # monotonic
    attempts: int = 0
    route: str = ""                # "provider/model" that answered, or last tried
    cache: str = "BYPASS"
    status: int = 200
    usage_data: dict | None = None
    answer: object = None          # the upstream's JSON answer: its usage is parsed only if asked
    admission: object = None       # the limiter's reservations, settled after the answer
    error: str = ""
    extra_headers: dict = field(default_factory=dict)
    raw_extra: list | None = None  # more response headers, already as raw pairs (the limiter's x-ratelimit-*)
    ingress: object = None         # an ingress.Exchange for /v1/responses, /v1/messages, /v1/completions
    # Sees each stream event on its way to the client and returns what to send (b"" drops it):
    # how usage is read from streams and how a streamed answer is assembled for the cache.
    tap: object = None
    # The ASGI receive channel, once the request body is read: a client leaving before the
    # answer then cancels the upstream call.
    receive: object = None
    conn: object = None            # the connection's writer (gateway/http.py) when served by edgerules' protocol
    ttft: float | None = None      # seconds from the start to a stream's first upstream event
    spans: list | None = None      # with --otel-endpoint: (provider, model, start, end, error) per attempt
    request_id: str = ""           # x-request-id: the client's when sane, else made here
    path: str = ""
    error_code: str | None = None
    cost: float | None = None      # USD, once known (a JSON answer from a priced model; 0 for a cache hit)
    captured: object = None        # under `log full`: the answer's bytes, or the stream's assembler
    hedged: list | None = None     # "provider/model" of each hedge attempt cancelled by a faster one

    @property
    def usage(self) -> dict | None:
        """The answer's usage block: read from the answer on first use (a limit settling, an
        access log line), so a request that needs neither never parses the upstream's JSON."""
        if self.usage_data is None and self.answer is not None:
            self.usage_data, self.answer = _usage_of(self.answer), None
        return self.usage_data

    @usage.setter
    def usage(self, value: dict | None) -> None:
        self.usage_data, self.answer = value, None

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        d = self.decision
        out = [
            (b"x-edgerules-route", _safe_bytes(self.route)),
            (b"x-edgerules-attempts", _ATTEMPTS[self.attempts] if self.attempts < 8 else b"%d" % self.attempts),
            (b"x-edgerules-cache", _safe_bytes(self.cache)),
            (b"x-edgerules-policy", _safe_bytes(self.live.policy.version)),
            (b"x-edgerules-rules", _rules_bytes(d.matched)),
            (b"x-request-id", self.request_id.encode()),
        ]
        if self.cost is not None:
            out.append((b"x-edgerules-cost", f"{self.cost:.10f}".rstrip("0").rstrip(".").encode()))
        for name, value in self.extra_headers.items():
            out.append((_safe_bytes(name.lower()), _header_safe(str(value)).encode("latin-1")))
        if self.raw_extra:
            out += self.raw_extra
        return out

    def headers(self) -> dict[str, str]:
        """The same headers as a dict, for error answers."""
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.raw_headers()}


_ATTEMPTS = [b"%d" % n for n in range(8)]
_BYTES_KEPT = 4096   # header values kept encoded (routes, versions, rule lists: the policy's own words)
_safe: dict[str, bytes] = {}
_rules: dict[tuple, bytes] = {}


def _safe_bytes(text: str) -> bytes:
    """_header_safe(text) encoded, remembered: a route or a policy version recurs on every request."""
    found = _safe.get(text)
    if found is None:
        if len(_safe) >= _BYTES_KEPT:
            _safe.clear()   # routes of pass-through models come from clients: bounded
        found = _safe[text] = _header_safe(text).encode("latin-1")
    return found


def _rules_bytes(matched) -> bytes:
    key = tuple(matched)
    found = _rules.get(key)
    if found is None:
        if len(_rules) >= _BYTES_KEPT:
            _rules.clear()
        found = _rules[key] = ",".join(key).encode()
    return found


def _header_safe(text: str) -> str:
    """A header value that cannot split or end the header block, whatever text it came from."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")


# ---- forwarding with retries and fallbacks -----------------------------------------------------

async def forward(gw: "Gateway", call: Call) -> Response:
    """Try the planned targets in order, each with the decision's retries, within the deadline;
    a client that leaves before the answer cancels the attempt under way."""
    if call.receive is None:
        return await _forward(gw, call)
    watch = DisconnectWatch(call.receive, call.conn)
    try:
        return await _forward(gw, call)
    except asyncio.CancelledError:
        if not watch.gone:
            raise
        asyncio.current_task().uncancel()
        raise GatewayError(CLIENT_GONE, "the client closed the connection before the answer",
                           code="client_closed") from None
    finally:
        watch.stop()


class DisconnectWatch:
    """Cancels the current task when the ASGI channel says the client is gone.

    Served by edgerules' own protocol, the connection calls it back when it is lost: no timer, no
    task. Otherwise armed by a timer, so a request answered within DISCONNECT_WATCH_AFTER costs
    one timer handle and no task.
    """

    __slots__ = ("receive", "task", "timer", "watcher", "gone", "active", "conn")

    def __init__(self, receive, conn=None):
        self.receive = receive
        self.task = asyncio.current_task()
        self.watcher = None
        self.gone = False
        self.active = True
        self.conn = conn
        if conn is not None:
            self.timer = None
            conn.on_lost = self._lost
        else:
            self.timer = asyncio.get_running_loop().call_later(DISCONNECT_WATCH_AFTER, self._start)

    def _lost(self) -> None:
        if self.active:
            self.gone = True
            self.task.cancel()

    def _start(self) -> None:
        self.timer = None
        if self.active:
            self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while self.active:
            message = await self.receive()
            if message.get("type") == "http.disconnect" and self.active:
                self.gone = True
                self.task.cancel()
                return

    def stop(self) -> None:
        self.active = False
        if self.conn is not None:
            self.conn.on_lost = None
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()


async def _forward(gw: "Gateway", call: Call) -> Response:
    d = call.decision
    requested = call.body.get("model") or ""
    now = time.monotonic()
    target = call.target
    health = gw.health if call.live.health is None else call.live.health   # a canary has its own
    if target.__class__ is Single:   # the common case needs no planning
        steps = [(target.provider, resolve_model(target, requested))]
    else:
        steps = plan(target, requested, d.route_by, health, now, gw.rng)
    tries = Tries(health, gw.retry_budgets if gw.retry_budgets.active(call.live.policy) else None)
    if len(steps) == 1 and steps[0].__class__ is tuple:   # one target: no step loop
        response = await _try_target(gw, call, steps[0][0], steps[0][1], tries, _attempt)
    else:
        response = await try_steps(gw, call, steps, tries)
    if response is None:
        raise _final_error(call, tries.last, tries.deadline_hit, tries.budget_spent)
    return response


class Tries:
    """What the attempts of one request share: health, the retry budget, the last error."""

    __slots__ = ("health", "budgets", "last", "deadline_hit", "budget_spent", "route", "approved")

    def __init__(self, health, budgets):
        self.health = health
        self.budgets = budgets             # RetryBudgets when the policy has one, else None
        self.last: ProviderError | None = None
        self.deadline_hit = False
        self.budget_spent = False          # an extra attempt was refused by a retry budget
        self.route = ""                    # "provider/model" of the attempt under way or last made
        self.approved = False              # the next attempt's room was already taken (a hedge lane)

    def may_start(self, call: Call, provider: str) -> bool:
        """Whether an attempt may start: a first always may; an extra one when the budget has room."""
        budgets = self.budgets
        if budgets is None:
            return True
        policy = call.live.policy
        if self.approved:
            self.approved = False
            return True
        if not call.attempts:
            budgets.first(policy, provider)
            return True
        if budgets.allow_extra(policy, provider):
            return True
        self.budget_spent = True
        return False


async def try_steps(gw: "Gateway", call: Call, steps: list, tries: Tries, attempt=None) -> Response | None:
    """Try each step in order (a (provider, model) with its retries, or a hedge) until one answers;
    None when none did (tries.last says why)."""
    for step in steps:
        if step.__class__ is HedgePlan:
            response = await race(gw, call, step, tries, try_steps)
        else:
            response = await _try_target(gw, call, step[0], step[1], tries, attempt or _attempt)
        if response is not None:
            return response
        if tries.deadline_hit or tries.budget_spent:
            return None
    return None


async def _try_target(gw: "Gateway", call: Call, provider_name: str, model: str, tries: Tries,
                      attempt) -> Response | None:
    d = call.decision
    retry = d.retry
    health = tries.health
    provider = call.live.providers[provider_name]
    spec = provider.spec
    for k in range(1 + (retry.attempts if retry is not None else 0)):
        if k:
            last = tries.last
            delay = retry_delay(retry, k, last.retry_after if last else None, gw.rng)
            if time.monotonic() + delay >= call.deadline_at:
                tries.deadline_hit = True
                return None
            await asyncio.sleep(delay)
        remaining = call.deadline_at - time.monotonic()
        if remaining <= 0:
            tries.deadline_hit = True
            return None
        if not tries.may_start(call, provider_name):
            return None
        timeout = min(d.timeout or spec.timeout, remaining)
        call.attempts += 1
        call.route = tries.route = f"{provider_name}/{model}"
        t0 = time.monotonic()
        try:
            response = await attempt(gw, call, provider, model, timeout)
        except asyncio.CancelledError:   # a faster hedge lane won, or the client left
            gw.metrics.upstream(provider_name, "cancelled")
            raise
        except ProviderError as exc:
            tries.last = exc
            if gw.tracer is not None:
                _note_attempt(call, provider_name, model, t0, exc.kind if exc.kind != "status" else str(exc.status))
            if exc.kind == "timeout" and timeout < (d.timeout or spec.timeout):
                tries.deadline_hit = True
            gw.metrics.upstream(provider_name, exc.kind if exc.kind != "status" else str(exc.status))
            if _counts_as_failure(exc):
                if health.of(provider_name).record_failure(spec, time.monotonic()):
                    log.warning("circuit for provider '%s' opened for %gs after %d failures",
                                provider_name, spec.cooldown, spec.failures)
            if _is_client_error(exc):
                raise _client_error(exc, call)
            if tries.deadline_hit or not is_retryable(retry, exc.upstream_status or exc.status, exc.kind):
                return None
            continue
        health.of(provider_name).record_success(model, time.monotonic() - t0)
        if gw.tracer is not None:
            _note_attempt(call, provider_name, model, t0, "")
        gw.metrics.upstream(provider_name, "ok")
        return response
    return None


def _note_attempt(call: Call, provider: str, model: str, started: float, error: str) -> None:
    if call.spans is None:
        call.spans = []
    call.spans.append((provider, model, started, time.monotonic(), error))


async def _attempt(gw: "Gateway", call: Call, provider, model: str, timeout: float) -> Response:
    return respond(gw, call, provider, await fetch(call, provider, model, timeout))


async def fetch(call: Call, provider, model: str, timeout: float):
    """One upstream call up to its first byte: a JSON answer, or (first event, events, stream)."""
    if call.ingress is not None:
        # /v1/responses, /v1/messages, /v1/completions: as sent to a provider of the same
        # format, else through its chat; either way a JSON answer or events in the client's shape.
        stream = answer = await call.ingress.forward(call, provider, model, timeout)
    elif call.kind == "embeddings" or not call.stream:
        if call.kind == "embeddings":
            answer = await provider.embeddings(call.body, model, timeout)
        else:
            answer = await provider.chat(call.body, model, timeout)
    else:
        stream = answer = await provider.chat_stream(call.body, model, timeout)
    if isinstance(answer, UpstreamResponse):
        return answer
    events = stream.__aiter__()
    try:
        first = await events.__anext__()
    except StopAsyncIteration:
        await stream.aclose()
        raise provider.error(502, f"upstream '{provider.spec.name}' ended the stream before any event",
                             kind="stream") from None
    except BaseException:
        await stream.aclose()
        raise
    return first, events, stream


def respond(gw: "Gateway", call: Call, provider, got) -> Response:
    """The client's response from what fetch() got."""
    if got.__class__ is not tuple:
        call.answer = got
        redactor = policy_redactor(call.live.policy)
        body = redactor.bytes(got.body) if redactor else got.body
        return (SlicedResponse if len(body) > SEND_SLICE else Response)(body, media_type="application/json")
    first, events, stream = got
    call.ttft = time.monotonic() - call.started
    return StreamingResponse(_relay(gw, call, first, events, stream), media_type="text/event-stream",
                             headers=SSE_HEADERS)


async def _relay(gw: "Gateway", call: Call, first: bytes, events: AsyncIterator[bytes], stream
                 ) -> AsyncIterator[bytes]:
    """Pass events through as they come; a failure after the first byte ends with an error event.

    The deadline is checked between events rather than with a timer around each read: a timer
    per event costs more than the relay itself, and the provider's per-read timeout already
    bounds any silence.
    """
    tap = call.tap
    deadline_at = call.deadline_at
    redactor = policy_redactor(call.live.policy)
    # Events come whole (a secret split over two network reads is joined by then); one split
    # over two events is caught by holding the first back (streamredact). Redacted before any
    # tap, so neither the cache nor the usage reader sees a secret.
    scrub = StreamRedactor(redactor, _delta_shape(call)) if redactor else None
    try:
        event = first
        while True:
            if len(event) < TAP_SLICE:
                out = scrub.feed(event) if scrub is not None else event
                if tap is not None and out:
                    out = _tapped(tap, out)
            else:
                out = await _tapped_in_slices(tap, event, scrub)
            if out:
                yield out
            event = await events.__anext__()
            if time.monotonic() > deadline_at:
                raise ProviderError(504, f"the request's deadline of {call.decision.deadline:g}s passed "
                                         f"mid-stream", kind="timeout")
    except StopAsyncIteration:
        if scrub is not None and (out := scrub.close()):
            yield _tapped(tap, out) if tap is not None else out
    except ProviderError as exc:
        if scrub is not None and (out := scrub.close()):   # the text before the failure is delivered
            yield _tapped(tap, out) if tap is not None else out
        call.status = 502 if exc.kind != "timeout" else 504
        call.error, call.error_code = _public(call, exc.message), "upstream_stream_error"
        # A named `error` event: the anthropic SDK ignores unnamed events, the openai SDK raises on either.
        named = call.ingress is not None and call.ingress.ingress.named_events
        yield ((b"event: error\n" if named else b"") + b"data: "
               + error_body(call.status, call.error, code="upstream_stream_error") + b"\n\n")
    finally:
        await stream.aclose()
        await gw.finish(call)


def _delta_shape(call: Call) -> str:
    """Where the stream's events carry their text: chat chunks, or the ingress shape's events."""
    return "chat" if call.ingress is None else call.ingress.ingress.delta_shape


async def _tapped_in_slices(tap, blob: bytes, scrub=None) -> bytes:
    """A read that brought thousands of events: redacted and tapped a slice at a time, letting
    other requests run in between, so no stream holds the loop for more than a few milliseconds."""
    if scrub is None and tap is None:
        return blob
    events = [event + b"\n\n" for event in blob.split(b"\n\n") if event]
    out = []
    for at in range(0, len(events), TAP_SLICE_EVENTS):
        if at:
            await asyncio.sleep(0)
        for event in events[at:at + TAP_SLICE_EVENTS]:
            if scrub is not None:
                event = scrub.feed(event)
            if tap is not None and event:
                event = _tapped(tap, event)   # a released event and this one may come together
            out.append(event)
    return b"".join(out)


def _tapped(tap, blob: bytes) -> bytes:
    """A tap sees one event at a time; a provider may hand over several at once."""
    if blob.count(b"\n\n") <= 1:
        return tap(blob)
    return b"".join(tap(event + b"\n\n") for event in blob.split(b"\n\n") if event)


def _usage_of(answer) -> dict | None:
    try:
        return answer.usage()
    except Exception:  # an answer that is not JSON has no usage; the client still gets it as sent
        return None


def _counts_as_failure(exc: ProviderError) -> bool:
    if exc.kind in ("timeout", "connect", "stream"):
        return True
    return exc.kind == "status" and (exc.status >= 500 or exc.status in (401, 403))


def _is_client_error(exc: ProviderError) -> bool:
    """An upstream 4xx about the request itself: the client's to fix; failing over won't help."""
    if exc.kind == "unsupported":
        return False
    status = exc.upstream_status or exc.status
    return exc.kind == "status" and 400 <= status < 500 and status not in (401, 403, 408, 429)


def _public(call: Call, message: str) -> str:
    """Upstream text as clients and logs may see it: every secret of the policy out, then cut."""
    return policy_redactor(call.live.policy).message(message)


def _client_error(exc: ProviderError, call: Call) -> GatewayError:
    status = exc.upstream_status or exc.status
    return GatewayError(status, _public(call, exc.message), code="upstream_rejected",
                        headers={"x-should-retry": "false"} if call.attempts > 1 else None)


def _final_error(call: Call, last: ProviderError | None, deadline_hit: bool,
                 budget_spent: bool = False) -> GatewayError:
    # Past a retry budget the client must not retry either: the gateway is shedding retries.
    headers = {"x-should-retry": "false"} if call.attempts > 1 or budget_spent else {}
    message = _public(call, last.message) if last is not None else ""
    if budget_spent and last is not None:
        message += " (not retried: the retry budget is spent)"
    if deadline_hit and (last is None or last.kind == "timeout"):
        return GatewayError(504, f"the request's deadline of {call.decision.deadline:g}s passed after "
                                 f"{call.attempts} attempt(s)"
                                 + (f"; last error: {message}" if last else ""),
                            code="deadline_exceeded", headers=headers)
    if last is None:
        return GatewayError(502, "no target could be tried", code="upstream_error", headers=headers)
    if last.kind == "timeout" and call.attempts == 1:
        return GatewayError(504, message, code="upstream_timeout", headers=headers)
    if last.kind == "unsupported":
        return GatewayError(400, message, code="unsupported", headers=headers)
    what = "the target" if call.attempts == 1 else f"all {call.attempts} attempts"
    if last.kind == "status" and last.upstream_status in PASSED_ON:
        # Rate limited or unavailable upstream, nothing left to try: the same status class and its
        # Retry-After, so the client's SDK backs off as it would against the provider itself.
        if last.retry_after is not None:
            headers["retry-after"] = str(math.ceil(last.retry_after))
        return GatewayError(last.upstream_status, f"{what} failed; last error: {message}",
                            code=PASSED_ON[last.upstream_status], headers=headers)
    return GatewayError(504 if last.kind == "timeout" else 502,
                        f"{what} failed; last error: {message}",
                        code="upstream_timeout" if last.kind == "timeout" else "upstream_error",
                        headers=headers)
