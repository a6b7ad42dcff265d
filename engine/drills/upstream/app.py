"""The fake upstream's ASGI app: routes, injected faults, stream pacing, control and stats endpoints."""
from __future__ import annotations

import asyncio
import functools
import random
import re
from collections import Counter
from dataclasses import asdict, replace

import orjson

from ...gateway.providers import echo
from . import answers, responses
from . import bedrock, gemini
from .faults import Faults, apply_knobs

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_EVENTSTREAM = [(b"content-type", bedrock.STREAM_TYPE)]
_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|embeddings)$")


class FakeUpstream:
    """A bare ASGI app: no routing framework, so it stays the fast baseline of benchmarks."""

    def __init__(self, format: str = "openai", faults: Faults | None = None, seed: int | None = None,
                 credentials: tuple[str, str, str] | None = None):
        self.format = format
        # bedrock: (access key, secret key, region) every request's SigV4 signature is checked against
        self.credentials = credentials or (bedrock.TEST_ACCESS_KEY, bedrock.TEST_SECRET_KEY, bedrock.TEST_REGION)
        self.initial = faults or Faults()
        self.seed = seed
        if format == "anthropic":
            self.routes = {"/messages": self._anthropic_chat}
        elif format in ("azure", "gemini", "bedrock"):
            self.routes = {}   # the model or deployment is in the path: see _route
        else:
            self.routes = {"/chat/completions": self._openai_chat, "/embeddings": self._embeddings,
                           **responses.routes(self)}
        self.reset()

    def reset(self) -> None:
        # Back to the command-line settings: runtime knobs and counters go, the RNG restarts.
        self.faults = replace(self.initial)
        self.rng = random.Random(self.seed)
        self.requests = self.chat = self.embeddings = self.models = 0
        self.by_status: Counter = Counter()
        self.cancelled = 0   # requests whose client went away during the injected latency
        self.by_key: Counter = Counter()   # requests by the key they presented (a test's fake keys)
        self.last_headers: list = []
        self.last_body = b""
        self.last_path = ""

    def stats(self) -> dict:
        try:
            body = orjson.loads(self.last_body) if self.last_body else None
        except orjson.JSONDecodeError:
            body = None
        return {"requests": self.requests, "chat": self.chat, "embeddings": self.embeddings,
                "models": self.models, "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "cancelled": self.cancelled,
                "by_key": dict(self.by_key),
                "last_headers": {k.decode("latin-1").lower(): v.decode("latin-1")
                                 for k, v in self.last_headers},
                "last_body": body, "last_path": self.last_path, "faults": asdict(self.faults)}

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
        query = scope.get("query_string", b"").decode("latin-1")
        self.last_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1") + (f"?{query}" if query else "")
        if self.format in ("azure", "gemini", "bedrock"):
            refusal = self._refusal(scope, body)
            if refusal is not None:
                await self._error(send, *refusal)
                return
        await self._api(send, receive, method, path, body, scope["headers"])

    def _refusal(self, scope, body: bytes) -> tuple[int, str] | None:
        """What the format's own authentication says of a request: (status, message) or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.format == "gemini":
            return gemini.key_problem(headers)
        if self.format == "azure":
            if not headers.get("api-key"):
                return 401, ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
                             "provide a valid key for an active subscription and use a correct regional API "
                             "endpoint for your resource.")
            if b"api-version=" not in scope.get("query_string", b""):
                return 404, "Resource not found (the api-version query parameter is missing)"
            return None
        problem = bedrock.signature_problem(scope["method"], scope.get("raw_path") or scope["path"].encode(),
                                            scope.get("query_string", b""), headers, body, self.credentials)
        return (403, problem) if problem else None

    def _route(self, path: str):
        """(handler, counter) of a path whose model or deployment is part of it; (None, None) else."""
        if self.format == "azure" and (m := _AZURE_PATH.match(path)):
            if m.group(2) == "embeddings":
                return functools.partial(self._embeddings, default_model=m.group(1)), "embeddings"
            return functools.partial(self._openai_chat, default_model=m.group(1)), "chat"
        if self.format == "gemini" and (m := gemini.PATH.match(path)):
            if m.group(2) == "batchEmbedContents":
                return self._gemini_embed, "embeddings"
            return functools.partial(self._gemini_chat, model=m.group(1),
                                     stream=m.group(2) == "streamGenerateContent"), "chat"
        if self.format == "bedrock" and (m := bedrock.PATH.match(path)):
            return functools.partial(self._bedrock_chat, model=bedrock.model_id(m.group(1)),
                                     stream=m.group(2) == "converse-stream"), "chat"
        return None, None

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
        route, counter = (self.routes.get(path), None) if self.routes else self._route(path)
        if path in ("/models", "/v1beta/models"):
            self.models += 1
        elif path == "/embeddings" and path in self.routes or counter == "embeddings":
            self.embeddings += 1
        elif path in self.routes or counter == "chat":
            self.chat += 1
        key = _presented_key(headers)
        if key:
            self.by_key[key] += 1
        if self.faults.latency:
            if await _disconnected(receive, self.faults.latency):
                self.cancelled += 1   # the client closed the connection while waiting (a hedge's loser)
                return
        if key and key == self.faults.refuse_key:
            # Worded as real servers do, the key in it: the gateway must redact it.
            await self._error(send, self.faults.refuse_key_status, f"Incorrect API key provided: {key}"
                              if self.faults.refuse_key_status in (401, 403) else f"Rate limit reached for key {key}")
            return
        status = self._injected_status()
        if status is not None:
            await self._error(send, status, answers.injected_message(status, headers))
            return
        if method == "GET" and path == "/models" and self.format in ("openai", "anthropic"):
            await self._send_json(send, 200, answers.model_list(self.format))
            return
        if method == "GET" and path == "/v1beta/models" and self.format == "gemini":
            await self._send_json(send, 200, gemini.model_list())
            return
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

    async def _openai_chat(self, send, receive, request: dict, default_model: str | None = None) -> None:
        if default_model is not None:   # azure: the deployment names the model
            request.setdefault("model", default_model)
        problem = answers.chat_problem(request)
        if problem:
            await self._error(send, 400, problem)
        elif request.get("stream"):
            await self._stream(send, receive, answers.openai_stream_frames(request))
        else:
            await self._send_json(send, 200, answers.openai_completion(request))

    async def _gemini_chat(self, send, receive, request: dict, model: str, stream: bool) -> None:
        problem = gemini.request_problem(request)
        if problem:
            await self._error(send, 400, problem)
        elif stream:
            await self._stream(send, receive, gemini.stream_frames(request, model))
        else:
            await self._send_json(send, 200, gemini.generate(request, model))

    async def _gemini_embed(self, send, receive, request: dict) -> None:
        status, payload = gemini.embed(request)
        await self._send_json(send, status, payload)

    async def _bedrock_chat(self, send, receive, request: dict, model: str, stream: bool) -> None:
        problem = bedrock.request_problem(request)
        if problem:
            await self._error(send, 400, problem)
        elif stream:
            await self._stream(send, receive, bedrock.stream_frames(request), _EVENTSTREAM)
        else:
            await self._send_json(send, 200, bedrock.converse(request))

    async def _embeddings(self, send, receive, request: dict, default_model: str | None = None) -> None:
        if default_model is not None:
            request.setdefault("model", default_model)
        problem = answers.embeddings_problem(request)
        if problem:
            await self._error(send, 400, problem)
        else:
            await self._send_json(send, 200, echo.embeddings(request, request["model"]))

    async def _anthropic_chat(self, send, receive, request: dict) -> None:
        problem = answers.messages_problem(request)
        if problem:
            await self._error(send, 400, problem)
        elif request.get("stream"):
            await self._stream(send, receive, answers.anthropic_stream_frames(request))
        else:
            await self._send_json(send, 200, answers.anthropic_message(request))

    async def _stream(self, send, receive, events: list[bytes], headers=_SSE) -> None:
        faults = self.faults
        self.by_status[200] += 1
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, event in enumerate(events):
            if faults.drop_after is not None and i >= faults.drop_after:
                return   # uvicorn closes the socket mid-body: the client sees a dropped connection
            if faults.error_after is not None and i >= faults.error_after:
                await send({"type": "http.response.body", "body": answers.error_event(self.format), "more_body": False})
                return
            if i and faults.chunk_delay and await _disconnected(receive, faults.chunk_delay):
                return   # a slow stream nobody reads would otherwise hold up shutdown
            await send({"type": "http.response.body", "body": event, "more_body": i < len(events) - 1})

    async def _error(self, send, status: int, message: str) -> None:
        payload = answers.error_body(self.format, status, message)
        headers = None
        if self.faults.retry_after is not None:
            headers = _JSON + [(b"retry-after", f"{self.faults.retry_after:g}".encode())]
        if self.format == "bedrock":
            headers = (headers or _JSON) + [(b"x-amzn-errortype", bedrock.error_type(status).encode())]
        await self._send_json(send, status, payload, headers)

    async def _send_json(self, send, status: int, payload, headers=None, count: bool = True) -> None:
        body = orjson.dumps(payload)
        if count:
            self.by_status[status] += 1
        await send({"type": "http.response.start", "status": status,
                    "headers": (headers or _JSON) + [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _presented_key(headers: list) -> str:
    for name, value in headers:
        if name in (b"authorization", b"x-api-key", b"api-key", b"x-goog-api-key"):
            text = value.decode("latin-1")
            return text[7:] if text.lower().startswith("bearer ") else text
    return ""


async def _disconnected(receive, delay: float) -> bool:
    """Wait `delay` seconds; True as soon as the client goes away."""
    try:
        message = await asyncio.wait_for(receive(), delay)
    except TimeoutError:
        return False
    return message["type"] == "http.disconnect"
