"""The Starlette app: endpoints, lifespan, admin guard, and `edgerules serve`."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import ipaddress
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..lang.errors import PolicyError
from ..lang.policy import load_policy
from ..observe import dashboard
from .errors import GatewayError, error_response
from ..observe import admin as observe_admin
from ..observe.requestlog import capture_stream, cost_of, failure_row, open_request_log, request_id
from ..observe.store import probe_store, resolve_uri
from . import canary as canary_admin
from .http import HEAD_WITH_BODY
from .pipeline import Call, forward
from .reload import Reloader
from .settings import BY_NAME
from .ingress import COMPLETIONS, MESSAGES, RESPONSES, Ingress
from .requests import read_json, validate_chat, validate_embeddings, validate_metadata
from .state import Gateway, log_refused

log = logging.getLogger("edgerules.gateway")

# Every serve setting and its variable is declared once, in settings.SETTINGS.
ENV_RULES, ENV_STATE, ENV_MAX_BODY, ENV_WATCH, ENV_LOG_LEVEL = (
    BY_NAME[name].env for name in ("rules", "state", "max_body", "watch", "log_level"))
GC_GEN0 = 50_000
# The ASGI scope key through which a model endpoint's handler leaves its request to be finished
# by the hot path once the answer is sent (False: the hot path is serving, nothing left yet).
FINISH_AFTER_SEND = "edgerules.finish_after_send"
ADMIN_TOKEN = "EDGERULES_ADMIN_TOKEN"
# Proxies whose X-Forwarded-For is believed (uvicorn's forwarded_allow_ips); unset: none.
FORWARDED_ALLOW_IPS = "EDGERULES_FORWARDED_ALLOW_IPS"
_FORWARDING_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")


def _json(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


# ---- the two model endpoints -------------------------------------------------------------------

async def chat_completions(request: Request) -> Response:
    return await _handle(request, "chat")


async def embeddings(request: Request) -> Response:
    return await _handle(request, "embeddings")


async def responses(request: Request) -> Response:
    return await _handle(request, "chat", RESPONSES)


async def messages(request: Request) -> Response:
    return await _handle(request, "chat", MESSAGES)


async def completions(request: Request) -> Response:
    return await _handle(request, "chat", COMPLETIONS)


async def _handle(request: Request, kind: str, ingress: Ingress | None = None) -> Response:
    gw: Gateway = request.app.state.gw
    call: Call | None = None
    scope = request.scope
    headers = header_dict(scope)
    rid = request_id(headers.get("x-request-id"))
    credential = headers.get("authorization") if ingress is None else ingress.credential(headers)
    live = gw.begin() if gw.canary is None else gw.begin_picked(credential, scope.get("client"))
    try:
        key = live.keyring.authenticate(credential)
        body = await read_json(request, gw.max_body, headers.get("content-length"))
        exchange = None if ingress is None else ingress.accept(body)
        if exchange is None:
            (validate_chat if kind == "chat" else validate_embeddings)(body)
        else:
            body = exchange.view   # the fields the policy reads, the same whatever the shape
        validate_metadata(headers)
        client = scope.get("client")
        decision = live.policy.evaluate(body, headers, key, scope["path"], scope["method"],
                                        client[0] if client else "", time.time())
        started = time.monotonic()
        call = Call(kind, body, kind == "chat" and body.get("stream") is True, key, live, decision,
                    decision.route, started, started + decision.deadline)
        call.receive = request.receive   # the body is read: the channel now only tells of a disconnect
        call.conn = scope.get(HEAD_WITH_BODY)
        call.ingress = exchange
        call.request_id, call.path = rid, scope["path"]
        if live.canary:
            call.extra_headers["x-edgerules-canary"] = "true"
        if gw.request_log is not None and call.stream and decision.log != "none":
            capture_stream(call)
        if decision.deny is not None:
            status, message = decision.deny
            raise GatewayError(status, message, code="denied_by_policy")
        if decision.error is not None:
            status, code, message = decision.error
            raise GatewayError(status, message, code=code, param="model")
        if decision.limits and gw.limiter is not None:
            await gw.limiter.admit(call)
        # Ingress shapes are not cached: their answers are keyed by shape, not by the chat body.
        if gw.cache is not None and exchange is None and decision.cache is not None and decision.cache.enabled:
            response = await gw.cache.serve(call, lambda: forward(gw, call), headers)
        else:
            response = await forward(gw, call)
    except GatewayError as err:
        return await _fail(gw, live, call, err, rid, scope["path"])
    except Exception:
        log.exception("unexpected error while handling a request")
        return await _fail(gw, live, call, GatewayError(500, "internal gateway error", code="internal_error"),
                           rid, scope["path"])
    if not call.stream:
        call.cost = cost_of(call, 200)
        if call.decision.log == "full":
            call.captured = response.body
    # Appended as raw bytes: MutableHeaders.update would rescan the list for every name.
    response.raw_headers.extend(call.raw_headers())
    if not getattr(response, "body_iterator", None):   # a stream finishes when its last event is sent
        if scope.get(FINISH_AFTER_SEND) is False and (call.admission is None or gw.limiter.settles_in_place):
            # The hot path finishes it once the answer is sent: metrics, the log row and the
            # limits' settling (in place on memory://) are off the answer's way. Sending waits
            # only when the client's socket is full, so a client that reads its answer and asks
            # again finds all of it done.
            scope[FINISH_AFTER_SEND] = call
        else:
            await gw.finish(call)
    return response


def header_dict(scope) -> dict[str, str]:
    """The request headers as a plain dict (names arrive lowercased); the first of a repeated name wins."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}


async def _fail(gw: Gateway, live, call: Call | None, err: GatewayError, rid: str, path: str) -> Response:
    if call is None:
        gw.end(live)
        gw.metrics.request("", err.status, "BYPASS", 0.0)
        if gw.request_log is not None:
            gw.request_log.add(failure_row(rid, path, err.status, err.code, err.message, live.policy.version,
                                           time.time()))
        log_refused(path, err.status, err.message, live.policy.version, rid)
        headers = {"x-edgerules-policy": live.policy.version, "x-edgerules-cache": "BYPASS",
                   "x-edgerules-attempts": "0", "x-edgerules-route": "", "x-edgerules-rules": "",
                   "x-request-id": rid}
        if live.canary:
            headers["x-edgerules-canary"] = "true"
        return error_response(err, headers)
    call.status, call.error, call.error_code = err.status, err.message, err.code
    await gw.finish(call)
    return error_response(err, call.headers())


# ---- the other endpoints -----------------------------------------------------------------------

async def models(request: Request) -> Response:
    gw: Gateway = request.app.state.gw
    live = gw.live
    try:
        live.keyring.authenticate(request.headers.get("authorization"))
    except GatewayError as err:
        return error_response(err)
    ids = live.policy.model_ids()
    data = [{"id": m, "object": "model", "created": 0, "owned_by": m.split("/", 1)[0] if "/" in m else "edgerules"}
            for m in ids]
    return _json({"object": "list", "data": data}, headers={"x-edgerules-policy": live.policy.version})


async def model_info(request: Request) -> Response:
    """GET /v1/models/{id}: one entry of the list above, or OpenAI's 404 `model_not_found`."""
    live = request.app.state.gw.live
    try:
        live.keyring.authenticate(request.headers.get("authorization"))
    except GatewayError as err:
        return error_response(err)
    model = request.path_params["model"]
    if not model:     # `/v1/models/`: a trailing slash, not an empty id (never a redirect)
        return error_response(GatewayError(404, "no such endpoint: GET /v1/models/", code="not_found"))
    headers = {"x-edgerules-policy": live.policy.version}
    if model not in live.policy.model_ids():
        return error_response(GatewayError(404, f"The model '{model}' does not exist", param="model",
                                           code="model_not_found"), headers)
    owner = model.split("/", 1)[0] if "/" in model else "edgerules"
    return _json({"id": model, "object": "model", "created": 0, "owned_by": owner}, headers=headers)


async def healthz(request: Request) -> Response:
    gw: Gateway = request.app.state.gw
    return _json({"status": "ok", "policy": gw.live.policy.version})


async def metrics(request: Request) -> Response:
    if os.environ.get(ADMIN_TOKEN) and (err := _admin_allowed(request)) is not None:
        return error_response(err)
    gw: Gateway = request.app.state.gw
    text = gw.metrics.render(gw.health.snapshot(), gw.live.policy.version)
    if gw.request_log is not None:
        text += gw.request_log.metrics_text()
    return Response(text, media_type="text/plain; version=0.0.4")


def _admin_allowed(request: Request) -> GatewayError | None:
    token = os.environ.get(ADMIN_TOKEN)
    if token:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        return GatewayError(401, f"admin endpoints need 'Authorization: Bearer ${ADMIN_TOKEN}'",
                            code="invalid_admin_token")
    host = request.client.host if request.client else ""
    if not os.environ.get(FORWARDED_ALLOW_IPS) and any(
            name in _FORWARDING_HEADERS for name, _ in request.scope["headers"]):
        # No proxy is trusted, yet the request says it was forwarded: a local proxy relaying
        # someone else. Its loopback address proves nothing about the client behind it.
        host = ""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return GatewayError(403, f"admin endpoints answer only on loopback unless {ADMIN_TOKEN} is set",
                        code="admin_forbidden")


async def admin_policy(request: Request) -> Response:
    if (err := _admin_allowed(request)) is not None:
        return error_response(err)
    gw: Gateway = request.app.state.gw
    policy = gw.live.policy
    return _json({
        "version": policy.version,
        "path": policy.path,
        "files": list(policy.files),
        "loaded_at": datetime.fromtimestamp(policy.loaded_at, timezone.utc).isoformat(),
        "rules": list(policy.rules),
        "providers": {n: {"format": s.format, "url": s.url} for n, s in policy.providers.items()},
        "keys": [k.name for k in policy.keys],
        "warnings": [d.to_dict() for d in policy.warnings],
        "notes": [d.to_dict() for d in policy.notes],
        "last_error": gw.last_error,
        "health": gw.health.snapshot(),
        "retry_budget": gw.retry_budgets.status(policy),
        "request_log": gw.request_log.status() if gw.request_log is not None else None,
        "stable": {"version": policy.version, "path": policy.path,
                   "percent": 100 - gw.canary.percent if gw.canary else 100,
                   **(gw.canary.stable_status() if gw.canary else {})},
        "canary": gw.canary.status() if gw.canary else None,
        "last_canary": gw.last_canary,
        **(gw.tools.status() if gw.tools is not None else {}),
    })


def _admin(handler):
    """An admin endpoint of another layer, behind the same guard."""
    async def guarded(request: Request) -> Response:
        if (err := _admin_allowed(request)) is not None:
            return error_response(err)
        return await handler(request)
    return guarded


def _dashboard_guard(request: Request) -> Response | None:
    """The page holds no data: once a token is set it loads anywhere and asks for the token."""
    if os.environ.get(ADMIN_TOKEN):
        return None
    err = _admin_allowed(request)
    return error_response(err) if err is not None else None


async def admin_reload(request: Request) -> Response:
    if (err := _admin_allowed(request)) is not None:
        return error_response(err)
    fanout = request.app.state.fanout
    force = request.query_params.get("force") in ("1", "true")
    if fanout is not None:
        result = await fanout.reload_all(force)    # --workers: every worker reloads and reports
    else:
        result = await request.app.state.reloader.reload("POST /admin/reload", force=force)
        result["workers"] = [{"pid": os.getpid(), **result}]
    return _json(result, status=200 if result["ok"] else 422)


# ---- errors outside the handlers ---------------------------------------------------------------

async def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail or "request failed"
    return error_response(GatewayError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(GatewayError(500, "internal gateway error", code="internal_error"))


# ---- app ---------------------------------------------------------------------------------------

class GatewayApp(Starlette):
    """Starlette, with a POST to a model endpoint handed straight to its handler: its middleware and
    router cost ~12-15 µs a request (a tenth of what the gateway adds over a bare pass-through),
    and these handlers answer every error themselves. Everything else goes through Starlette."""

    hot: dict = {}   # path -> handler; empty when middleware must see every request

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            handler = self.hot.get(scope["path"])
            if handler is not None:
                scope["app"] = self
                scope[FINISH_AFTER_SEND] = False
                request = Request(scope, receive, send)
                try:
                    response = await handler(request)
                except Exception as exc:   # as ServerErrorMiddleware and _server_error would answer
                    response = await _server_error(request, exc)
                head = scope.get(HEAD_WITH_BODY)
                held = head is not None and not hasattr(response, "body_iterator")
                if held:
                    head.hold()   # a whole answer: its head and body leave in one send
                try:
                    await response(scope, receive, send)
                finally:
                    if held:
                        head.flush()
                    # Out of the scope first: the call holds the cycle's receive, and the cycle
                    # the scope, a loop only the garbage collector would break (its full passes
                    # were 10-20 ms stalls).
                    call, scope[FINISH_AFTER_SEND] = scope[FINISH_AFTER_SEND], None
                    if call:
                        await self.state.gw.finish(call)
                return
        await super().__call__(scope, receive, send)


class LazyMcp:
    """The tool gateway and its MCP endpoint, made on first need: the policy declares tool servers
    (at start or in a reload), or a client calls /mcp. The SDK's session manager runs in a task of
    its own from then until shutdown (its task group must be entered and left in one task)."""

    def __init__(self, gw):
        self.gw = gw
        self._endpoint = None
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()

    def make_tools(self):
        from ..tools.gateway import ToolGateway

        tools = ToolGateway(self.gw)
        self._start()
        return tools

    async def endpoint(self):
        if self.gw.tools is None:
            self.gw.tools = self.make_tools()
            self.gw.tools.install(self.gw.live.policy)
        await self._ready.wait()
        return self._endpoint

    def _start(self) -> None:
        if self._task is None:
            from ..tools.server import McpEndpoint

            self._endpoint = McpEndpoint(self.gw)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mcp-endpoint")

    async def _run(self) -> None:
        try:
            async with self._endpoint.run():
                self._ready.set()
                await self._stop.wait()
        finally:
            self._ready.set()   # nobody waits forever on an endpoint that could not start

    async def stop(self) -> None:
        if self._task is not None:
            self._stop.set()
            await self._task


def create_app(rules: str | None = None, *, state_uri: str | None = None, max_body: int | None = None,
               watch: bool | None = None) -> Starlette:
    from . import settings, workers

    env = settings.resolve({})    # the environment, else the defaults (serve exported the flags there)
    rules = rules or env["rules"]
    state_uri = state_uri or env["state"]
    max_body = max_body or env["max_body"]
    watch = env["watch"] if watch is None else watch
    if not logging.getLogger().handlers:
        # A worker spawned by uvicorn --workers starts with no logging set up.
        configure_logging(env["log_level"])
    fanout_dir = os.environ.get(workers.ENV_FANOUT_DIR)
    if fanout_dir:
        # A SIGHUP fanned out before the lifespan installs its handler must not end the worker.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    mcp = None   # the tool gateway at /mcp, started when a policy has tool servers or /mcp is called

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        nonlocal mcp
        gw = Gateway(max_body=max_body, state_uri=state_uri)
        policy = load_policy(rules)
        mcp = LazyMcp(gw)
        gw.tools_factory = mcp.make_tools   # install() calls it for a policy with tool servers
        gw.install(policy)
        _attach_state_backends(gw, state_uri)
        if gw.shared is not None:
            await gw.shared.prepare(getattr(gw.limiter, "storage", None))
        if env["otel_endpoint"]:
            from ..observe.traces import Tracer   # the otel extra: imported only when asked for
            gw.tracer = Tracer(env["otel_endpoint"])
        gw.request_log = await open_request_log(resolve_uri(env["log_store"], rules), queue=env["log_queue"],
                                                retention=env["log_retention"], max_rows=env["log_max_rows"],
                                                required=env["log_store"].lower() != "auto",
                                                writer=env["log_writer"])
        if env["canary"]:
            canary = gw.start_canary(load_policy(env["canary"]), env["canary_percent"],
                                     env["canary_max_error_rate"], env["canary_min_requests"])
            log.info("canary %s loaded from %s: %g%% of traffic", canary.live.policy.version, env["canary"],
                     canary.percent)
        reloader = Reloader(gw, rules)
        fanout = workers.WorkerFanout(fanout_dir, reloader) if fanout_dir else None
        app.state.gw, app.state.reloader, app.state.fanout = gw, reloader, fanout
        reloader.start(watch, fanout.on_sighup if fanout else None)
        # Everything loaded so far (grammar tables, the compiled policy, imports) lives as long as
        # the process: moving it out of the collector's sight makes every later collection cheap.
        gc.freeze()
        # Each request parses JSON into short-lived containers; a larger first generation lets
        # them die before a collection looks at them (measured: ~5% less CPU a request at 32
        # connections, in every round of an A/B run).
        gc.set_threshold(GC_GEN0, 50, 100)
        log.info("policy %s loaded from %s: %d rules, %d providers, %d keys", policy.version, rules,
                 len(policy.rules), len(policy.providers), len(policy.keys))
        try:
            yield
        finally:
            await mcp.stop()
            await reloader.stop()
            if gw.tracer is not None:
                await asyncio.to_thread(gw.tracer.shutdown)   # sends the spans still queued
            if gw.request_log is not None:
                await gw.request_log.close()   # writes what is queued
            await gw.close()

    async def _mcp_app(scope, receive, send):
        await (await mcp.endpoint())(scope, receive, send)

    class _Mcp:     # an ASGI app, not a function: Starlette's Route then passes the raw scope
        __call__ = staticmethod(_mcp_app)
    _mcp = _Mcp()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model_info, methods=["GET"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/mcp", _mcp, methods=["GET", "POST", "DELETE"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/admin/policy", admin_policy, methods=["GET"]),
        Route("/admin/reload", admin_reload, methods=["POST"]),
        Route("/admin/canary", _admin(canary_admin.start), methods=["POST"]),
        Route("/admin/canary", _admin(canary_admin.drop), methods=["DELETE"]),
        Route("/admin/canary/promote", _admin(canary_admin.promote), methods=["POST"]),
        *dashboard.routes(_dashboard_guard),
        Route("/admin/usage", _admin(observe_admin.usage), methods=["GET"]),
        Route("/admin/requests", _admin(observe_admin.requests_page), methods=["GET"]),
        Route("/admin/requests/{id}", _admin(observe_admin.one_request), methods=["GET"]),
        Route("/admin/limits", _admin(observe_admin.limits), methods=["GET"]),
    ]
    middleware = [Middleware(workers.WorkerHeader)] if fanout_dir else None
    app = GatewayApp(routes=routes, lifespan=lifespan, middleware=middleware,
                     exception_handlers={HTTPException: _http_error, Exception: _server_error})
    if middleware is None:
        app.hot = {"/v1/chat/completions": chat_completions, "/v1/embeddings": embeddings,
                   "/v1/responses": responses, "/v1/messages": messages, "/v1/completions": completions}
    # A trailing slash is a 404, not a 307 whose Location Starlette builds from the client's Host.
    app.router.redirect_slashes = False
    return app


def _attach_state_backends(gw: Gateway, state_uri: str) -> None:
    """Limits, cache and circuit breakers, when their modules are present (they share one storage
    URI and, for Redis, one connection pool)."""
    from .shared import open_shared

    gw.shared = shared = open_shared(state_uri)
    if shared is not None:
        gw.health.share(shared, gw.live.policy.providers)
    try:
        from .limiter import Limiter
    except ImportError:
        Limiter = None
    try:
        from .cache import ResponseCache
    except ImportError:
        ResponseCache = None
    if Limiter is not None:
        gw.limiter = Limiter(state_uri, gw, shared=shared)
    if ResponseCache is not None:
        gw.cache = ResponseCache(state_uri, gw, shared=shared)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(args) -> int:
    """`edgerules serve`: resolve the settings (flag > environment > default), check, then listen."""
    from . import settings
    from .shared import check_state_uri, is_shared

    try:
        values = settings.resolve(vars(args))
    except ValueError as exc:
        print(f"edgerules serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(values["log_level"])
    try:
        policy = load_policy(values["rules"])   # fail fast, with the rendered errors, before binding a port
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    if policy.warnings:
        from ..lang.errors import render_all
        print(render_all(policy.warnings, policy.sources), file=sys.stderr)
    if values["canary"]:
        try:
            load_policy(values["canary"])   # the canary too: a broken one never starts serving
        except PolicyError as exc:
            print(f"edgerules serve: the canary policy ({values['canary']}) did not load:\n{exc}", file=sys.stderr)
            return 1
    if (problem := check_state_uri(values["state"])) is not None:
        print(f"edgerules serve: {problem}", file=sys.stderr)
        return 2
    if values["workers"] > 1 and policy.limits and not is_shared(values["state"]):
        print(f"edgerules serve: --workers {values['workers']} with --state {values['state']} would give each "
              f"worker its own counters and multiply every limit by {values['workers']}; use "
              f"--state redis://HOST:PORT (shared by every worker), or --workers 1", file=sys.stderr)
        return 2
    if (problem := probe_store(values["log_store"], values["rules"])) is not None:
        print(f"edgerules serve: {problem}", file=sys.stderr)
        return 2
    # Every --workers process builds its app from the environment.
    settings.export(values)
    return _run(values)


def _run(values: dict) -> int:
    import shutil
    import tempfile

    import uvicorn

    from .http import GatewayConfig, GuardedHttpProtocol, Limits
    from .workers import ENV_FANOUT_DIR, Supervisor

    limits = Limits(max_header_line=values["max_header_line"], max_header_bytes=values["max_header_bytes"],
                    max_headers=values["max_headers"], header_timeout=values["header_timeout"],
                    body_timeout=values["body_timeout"], max_connections=values["max_connections"])
    config = GatewayConfig("edgerules.gateway.server:create_app", limits=limits, factory=True,
                           host=values["host"], port=values["port"], workers=values["workers"],
                           loop="uvloop", http=GuardedHttpProtocol, ws="none",
                           timeout_keep_alive=values["keep_alive_timeout"], log_level=values["log_level"],
                           access_log=False, log_config=None,
                           forwarded_allow_ips=values["forwarded_allow_ips"])
    if values["workers"] == 1:
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else 3
    directory = tempfile.mkdtemp(prefix="edgerules-workers-")
    os.environ[ENV_FANOUT_DIR] = directory
    try:
        Supervisor(config, [config.bind_socket()], directory).run()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0
