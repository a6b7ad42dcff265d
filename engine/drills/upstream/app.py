"""`edgerules upstream`: a fake OpenAI- or Anthropic-style provider with fault injection."""
from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import socket
import sys
from collections import Counter
from dataclasses import asdict, dataclass, fields, replace
from http import HTTPStatus

import orjson

from ...gateway.providers import echo
from ...gateway.providers.base import DONE

MODELS = ("echo",)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                 404: "not_found_error", 429: "rate_limit_error"}
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    529: "overloaded_error"}
_DROPPED = "ASGI callable returned without completing response."


def parse_duration(value) -> float:
    """Seconds from `50ms`, `0.2s`, `1m` or a bare number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"invalid duration {value!r} (expected e.g. 50ms, 0.2s, 1m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _rate(value) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"fail rate must be between 0 and 1, not {value!r}")
    return rate


def _status(value) -> int:
    status = int(value)
    if not 400 <= status <= 599:
        raise ValueError(f"status must be an HTTP error status (400..599), not {value!r}")
    return status


def _count(value) -> int:
    count = int(value)
    if count < 0:
        raise ValueError(f"expected a count >= 0, not {value!r}")
    return count


@dataclass
class Faults:
    latency: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 503
    status: int | None = None         # every request answers this
    retry_after: float | None = None
    drop_after: int | None = None     # stream events sent before the connection is dropped
    error_after: int | None = None    # stream events sent before an error event ends the stream
    chunk_delay: float = 0.0
    fail_next: int = 0


_KNOBS = {"latency": parse_duration, "fail_rate": _rate, "fail_status": _status, "status": _status,
          "retry_after": parse_duration, "drop_after": _count, "error_after": _count,
          "chunk_delay": parse_duration, "fail_next": _count}
_NULLABLE = {f.name for f in fields(Faults) if f.default is None}


def apply_knobs(faults: Faults, knobs: dict) -> Faults:
    """A copy of `faults` with the knobs set; raises ValueError naming the bad knob."""
    changes = {}
    for name, value in knobs.items():
        if name not in _KNOBS:
            raise ValueError(f"unknown knob '{name}' (known: {', '.join(_KNOBS)})")
        if value is None and name in _NULLABLE:
            changes[name] = None
            continue
        try:
            changes[name] = _KNOBS[name](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"knob '{name}': {exc}") from None
    return replace(faults, **changes)


class FakeUpstream:
    """A bare ASGI app: no routing framework, so it stays the fast baseline of benchmarks."""

    def __init__(self, format: str = "openai", faults: Faults | None = None, seed: int | None = None):
        self.format = format
        self.initial = faults or Faults()
        self.seed = seed
        if format == "anthropic":
            self.routes = {"/messages": self._anthropic_chat}
        else:
            self.routes = {"/chat/completions": self._openai_chat, "/embeddings": self._embeddings}
        self.reset()

    def reset(self) -> None:
        # Back to the command-line settings: runtime knobs and counters go, the RNG restarts.
        self.faults = replace(self.initial)
        self.rng = random.Random(self.seed)
        self.requests = self.chat = self.embeddings = self.models = 0
        self.by_status: Counter = Counter()
        self.last_headers: list = []
        self.last_body = b""

    def stats(self) -> dict:
        try:
            body = orjson.loads(self.last_body) if self.last_body else None
        except orjson.JSONDecodeError:
            body = None
        return {"requests": self.requests, "chat": self.chat, "embeddings": self.embeddings,
                "models": self.models, "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "last_headers": {k.decode("latin-1").lower(): v.decode("latin-1")
                                 for k, v in self.last_headers},
                "last_body": body, "faults": asdict(self.faults)}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        if path.startswith("/_") or path == "/healthz":
            await self._admin(send, method, path, body)
            return
        path = path[3:] if path.startswith("/v1/") else path
        self.requests += 1
        self.last_headers = scope["headers"]
        self.last_body = body
        await self._api(send, receive, method, path, body, scope["headers"])

    async def _admin(self, send, method: str, path: str, body: bytes) -> None:
        if path == "/healthz":
            await self._send_json(send, 200, {"status": "ok", "format": self.format}, count=False)
        elif path == "/_stats" and method == "GET":
            await self._send_json(send, 200, self.stats(), count=False)
        elif path == "/_reset" and method == "POST":
            self.reset()
            await self._send_json(send, 200, {"faults": asdict(self.faults)}, count=False)
        elif path == "/_control" and method == "POST":
            try:
                knobs = orjson.loads(body or b"{}")
                if not isinstance(knobs, dict):
                    raise ValueError("expected a JSON object of knobs")
                self.faults = apply_knobs(self.faults, knobs)
            except (ValueError, orjson.JSONDecodeError) as exc:
                await self._send_json(send, 400, {"error": {"message": str(exc)}}, count=False)
                return
            await self._send_json(send, 200, {"faults": asdict(self.faults)}, count=False)
        else:
            await self._send_json(send, 404, {"error": {"message": f"no such endpoint: {method} {path}"}},
                                  count=False)

    async def _api(self, send, receive, method: str, path: str, body: bytes, headers: list) -> None:
        # Counted before faults apply, so a test can see how many attempts reached each endpoint.
        if path == "/models":
            self.models += 1
        elif path == "/embeddings" and path in self.routes:
            self.embeddings += 1
        elif path in self.routes:
            self.chat += 1
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        status = self._injected_status()
        if status is not None:
            await self._error(send, status, _injected_message(status, headers))
            return
        if method == "GET" and path == "/models":
            await self._send_json(send, 200, _model_list(self.format))
            return
        route = self.routes.get(path)
        if route is None or method != "POST":
            await self._error(send, 404, f"no such endpoint: {method} /v1{path}")
            return
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict):
            await self._error(send, 400, "the request body must be a JSON object")
            return
        await route(send, receive, request)

    def _injected_status(self) -> int | None:
        faults = self.faults
        if faults.status is not None:
            return faults.status
        if faults.fail_next > 0:
            faults.fail_next -= 1
            return faults.fail_status
        if faults.fail_rate and self.rng.random() < faults.fail_rate:
            return faults.fail_status
        return None

    async def _openai_chat(self, send, receive, request: dict) -> None:
        problem = _chat_problem(request)
        if problem:
            await self._error(send, 400, problem)
        elif request.get("stream"):
            events = [orjson.dumps(e) for e in echo.stream_events(request, request["model"])]
            await self._stream(send, receive, [b"data: " + e + b"\n\n" for e in events] + [DONE])
        else:
            await self._send_json(send, 200, echo.completion(request, request["model"]))

    async def _embeddings(self, send, receive, request: dict) -> None:
        if not isinstance(request.get("model"), str):
            await self._error(send, 400, "you must provide a model parameter")
        elif request.get("input") in (None, "", []):
            await self._error(send, 400, "'input' is a required property and must not be empty")
        else:
            await self._send_json(send, 200, echo.embeddings(request, request["model"]))

    async def _anthropic_chat(self, send, receive, request: dict) -> None:
        problem = _messages_problem(request)
        if problem:
            await self._error(send, 400, problem)
        elif request.get("stream"):
            events = [b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
                      for e in anthropic_stream_events(request)]
            await self._stream(send, receive, events)
        else:
            await self._send_json(send, 200, anthropic_message(request))

    async def _stream(self, send, receive, events: list[bytes]) -> None:
        faults = self.faults
        self.by_status[200] += 1
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        for i, event in enumerate(events):
            if faults.drop_after is not None and i >= faults.drop_after:
                return   # uvicorn closes the socket mid-body: the client sees a dropped connection
            if faults.error_after is not None and i >= faults.error_after:
                await send({"type": "http.response.body", "body": self._error_event(), "more_body": False})
                return
            if i and faults.chunk_delay and await _disconnected(receive, faults.chunk_delay):
                return   # a slow stream nobody reads would otherwise hold up shutdown
            await send({"type": "http.response.body", "body": event, "more_body": i < len(events) - 1})

    def _error_event(self) -> bytes:
        if self.format == "anthropic":
            payload = {"type": "error",
                       "error": {"type": "overloaded_error", "message": "injected stream error: overloaded"}}
            return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
        payload = {"error": {"message": "injected stream error: server error", "type": "server_error",
                             "param": None, "code": None}}
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    async def _error(self, send, status: int, message: str) -> None:
        if self.format == "anthropic":
            payload = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"),
                                                  "message": message}}
        else:
            kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
            payload = {"error": {"message": message, "type": kind, "param": None,
                                 "code": "invalid_api_key" if status == 401 else None}}
        headers = None
        if self.faults.retry_after is not None:
            headers = _JSON + [(b"retry-after", f"{self.faults.retry_after:g}".encode())]
        await self._send_json(send, status, payload, headers)

    async def _send_json(self, send, status: int, payload, headers=None, count: bool = True) -> None:
        body = orjson.dumps(payload)
        if count:
            self.by_status[status] += 1
        await send({"type": "http.response.start", "status": status,
                    "headers": (headers or _JSON) + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def _disconnected(receive, delay: float) -> bool:
    """Wait `delay` seconds; True as soon as the client goes away."""
    try:
        message = await asyncio.wait_for(receive(), delay)
    except TimeoutError:
        return False
    return message["type"] == "http.disconnect"


def _injected_message(status: int, headers: list) -> str:
    if status == 401:
        # Some real servers echo the presented key; doing it here lets tests prove the gateway redacts it.
        keys = [v.decode("latin-1") for k, v in headers if k in (b"authorization", b"x-api-key")]
        presented = keys[0] if keys else ""
        return f"incorrect API key provided: {presented.removeprefix('Bearer ')}"
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "overloaded" if status == 529 else "error"
    return f"injected failure: {status} {phrase}"


def _model_list(format: str) -> dict:
    if format == "anthropic":
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}
                for m in MODELS]
        return {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "edgerules"}
                                       for m in MODELS]}


def _chat_problem(request: dict) -> str | None:
    if not isinstance(request.get("model"), str):
        return "you must provide a model parameter"
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    return None


def _messages_problem(request: dict) -> str | None:
    if not isinstance(request.get("model"), str):
        return "model: Field required"
    if not isinstance(request.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            return f'messages.{i}.role: Input should be "user" or "assistant"'
    return None


def _as_echo_body(request: dict) -> dict:
    system = request.get("system")
    messages = ([{"role": "system", "content": system}] if system else []) + request["messages"]
    return {"messages": messages, "stop": request.get("stop_sequences"), "max_tokens": request["max_tokens"]}


def _anthropic_answer(request: dict) -> tuple[str, str, str | None, int, str]:
    body = _as_echo_body(request)
    content, finish, matched = echo.answer(body)
    reason = "stop_sequence" if matched else "max_tokens" if finish == "length" else "end_turn"
    answer_id = echo.answer_id(body, request["model"], "msg_echo_")
    return content, reason, matched, echo.prompt_tokens(body), answer_id


def anthropic_message(request: dict) -> dict:
    """The echo answer to an Anthropic Messages request, in Anthropic's shape."""
    content, reason, matched, prompt, answer_id = _anthropic_answer(request)
    return {"id": answer_id, "type": "message", "role": "assistant", "model": request["model"],
            "content": [{"type": "text", "text": content}], "stop_reason": reason, "stop_sequence": matched,
            "usage": {"input_tokens": prompt, "output_tokens": echo.estimate_tokens(content)}}


def anthropic_stream_events(request: dict) -> list[dict]:
    """The echo answer as the event sequence Anthropic streams."""
    content, reason, matched, prompt, answer_id = _anthropic_answer(request)
    start = {"id": answer_id, "type": "message", "role": "assistant", "model": request["model"],
             "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": prompt, "output_tokens": 1}}
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
          for piece in echo.split_pieces(content)),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": matched},
         "usage": {"output_tokens": echo.estimate_tokens(content)}},
        {"type": "message_stop"},
    ]


def _arg(convert):
    # argparse shows an ArgumentTypeError's own text instead of "invalid <function> value".
    def parse(text: str):
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgerules upstream",
        description="A fake OpenAI- or Anthropic-compatible provider with fault injection.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--format", choices=("openai", "anthropic"), default="openai",
                        help="the API it speaks (default openai)")
    parser.add_argument("--latency", type=_arg(parse_duration), default=0.0,
                        help="added before every answer, e.g. 50ms")
    parser.add_argument("--fail-rate", type=_arg(_rate), default=0.0,
                        help="share of requests that fail (0..1)")
    parser.add_argument("--fail-status", type=_arg(_status), default=503,
                        help="status of failed requests (503)")
    parser.add_argument("--status", type=_arg(_status), default=None,
                        help="answer every request with this status")
    parser.add_argument("--retry-after", type=_arg(parse_duration), default=None,
                        help="Retry-After seconds sent with error answers")
    parser.add_argument("--drop-after", type=_arg(_count), default=None,
                        help="in a stream, send N events then drop the connection")
    parser.add_argument("--error-after", type=_arg(_count), default=None,
                        help="in a stream, send N events then an error event")
    parser.add_argument("--chunk-delay", type=_arg(parse_duration), default=0.0,
                        help="pause between stream events")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fail-rate random generator")
    return parser


class _DropFilter(logging.Filter):
    # An injected drop makes uvicorn log an error; it is the point of the drill, not a fault.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _DROPPED


def _listen(host: str, port: int) -> socket.socket:
    # Bound here rather than by uvicorn, so a taken port is one clear line instead of a traceback.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def _serve(server, sock: socket.socket, args) -> int:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            return 1
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    print(f"edgerules upstream listening on http://{args.host}:{port} (format {args.format})", flush=True)
    await task
    return 0


def main(argv: list[str] | None = None) -> int:
    import uvicorn
    import uvloop

    args = build_parser().parse_args(argv)
    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        print(f"edgerules upstream: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    faults = Faults(latency=args.latency, fail_rate=args.fail_rate, fail_status=args.fail_status,
                    status=args.status, retry_after=args.retry_after, drop_after=args.drop_after,
                    error_after=args.error_after, chunk_delay=args.chunk_delay)
    app = FakeUpstream(args.format, faults, args.seed)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="off", access_log=False,
                            log_level="warning", server_header=False, timeout_graceful_shutdown=1)
    logging.getLogger("uvicorn.error").addFilter(_DropFilter())
    server = uvicorn.Server(config)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_serve(server, sock, args))
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
