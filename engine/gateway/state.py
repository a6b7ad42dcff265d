"""The gateway's live state: the policy and its providers (swapped as one reference on reload),
plus what outlives a reload: health, limits, cache and metrics."""
from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

import orjson

from ..lang.policy import Policy
from ..observe.requestlog import build_row
from .auth import KeyRing
from .metrics import Metrics
from .providers import Provider, build_provider
from .redact import policy_redactor
from .keypool import bind_pools
from .hedge import hedged_attempts
from .retrybudget import RetryBudgets
from .router import Health

log = logging.getLogger("edgerules.gateway")
access_log = logging.getLogger("edgerules.access")


@dataclass(eq=False)
class Live:
    """Everything a request needs from one policy version; a request keeps the Live it started with."""

    policy: Policy
    providers: dict[str, Provider]
    keyring: KeyRing
    inflight: int = 0
    retired: bool = False
    orphans: list[Provider] = field(default_factory=list)   # to close once inflight drops to 0
    canary: bool = False
    health: Health | None = None   # a canary's own breakers and latencies; None: the gateway's


class Gateway:
    def __init__(self, *, max_body: int = 4 * 1024 * 1024, state_uri: str = "memory://"):
        self.live: Live | None = None
        self.max_body = max_body
        self.state_uri = state_uri
        self.health = Health()
        self.metrics = Metrics()
        self.retry_budgets = RetryBudgets(self.metrics)   # `retry budget`: per worker
        self.rng = random.Random()
        self.limiter = None   # edgerules.gateway.limiter.Limiter, set by the app
        self.cache = None     # edgerules.gateway.cache.ResponseCache, set by the app
        self.shared = None    # edgerules.gateway.shared.Shared: the Redis of --state redis://, set by the app
        self.last_error: dict | None = None
        self.tracer = None    # edgerules.observe.traces.Tracer, with --otel-endpoint
        self.request_log = None   # edgerules.observe.requestlog.RequestLog, when a log store is set
        self.canary = None        # edgerules.gateway.canary.Canary while one is served
        self.last_canary: dict | None = None   # how the last canary ended
        self.tools = None         # edgerules.tools.gateway.ToolGateway: /mcp, set by the app
        # Makes self.tools when a policy first declares tool servers (or /mcp is first called):
        # the MCP SDK costs ~0.5 s to import, which a gateway without tools never pays.
        self.tools_factory = None

    # ---- policy swaps -------------------------------------------------------------------

    def install(self, policy: Policy) -> dict:
        """Make `policy` live in one step; returns what changed, for the reload log line."""
        old = self.live
        old_providers = old.providers if old else {}
        providers: dict[str, Provider] = {}
        changed = {"added": [], "removed": [], "replaced": []}
        for name, spec in policy.providers.items():
            prev = old_providers.get(name)
            if prev is not None and prev.spec.client_identity() == spec.client_identity():
                prev.spec = spec   # same client; timeouts, prices and cooldowns may have changed
                providers[name] = prev
            else:
                providers[name] = build_provider(spec)
                changed["added" if prev is None else "replaced"].append(name)
        changed["removed"] = [n for n in old_providers if n not in policy.providers]
        live = Live(policy, providers, KeyRing(policy.keys))
        bind_pools(providers.values(), self)
        self.live = live
        self.metrics.tool_servers = frozenset(policy.servers)
        if self.tools is None and policy.servers and self.tools_factory is not None:
            self.tools = self.tools_factory()
        if self.tools is not None:
            changed["tools"] = self.tools.install(policy)
        self._know()
        self.health.forget(policy.providers)
        if old is not None:
            keep = {id(p) for p in providers.values()}
            old.orphans = [p for p in old_providers.values() if id(p) not in keep]
            old.retired = True
            self._maybe_close(old)
        return changed

    def begin(self) -> Live:
        live = self.live
        live.inflight += 1
        return live

    def begin_picked(self, credential: str | None, client) -> Live:
        """begin() while a canary is served: the canary's Live for its share of keys (or addresses)."""
        canary = self.canary
        live = canary.pick(self.live, credential, client[0] if client else "") if canary else self.live
        live.inflight += 1
        return live

    # ---- the canary ---------------------------------------------------------------------

    def start_canary(self, policy: Policy, percent: float, max_error_rate: float | None = None,
                     min_requests: int = 50):
        """Serve `policy` to `percent` of traffic beside the stable one (replacing any canary).

        Its providers are its own clients with their own breakers, even where a name matches a
        stable provider: a canary pointing `openai` elsewhere must not open the stable's circuit."""
        from .canary import Canary

        live = Live(policy, {name: build_provider(spec) for name, spec in policy.providers.items()},
                    KeyRing(policy.keys), canary=True, health=Health())
        if self.canary is not None:
            self._end_canary("replaced", f"replaced by {policy.version}")
        bind_pools(live.providers.values(), self)
        self.canary = Canary(live, percent, max_error_rate, min_requests)
        self._know()
        return self.canary

    def promote_canary(self) -> str:
        """The canary becomes the live policy, keeping its provider clients."""
        canary, old = self.canary, self.live
        self.last_canary = canary.outcome("promoted", f"replaced {old.policy.version}")
        self.canary = None
        live = canary.live
        # From here on the gateway's breakers (keyed by provider name, shared with --state redis://)
        # serve it, as they serve a reloaded policy.
        live.canary, live.health = False, None
        self.live = live
        self.health.forget(live.policy.providers)
        self._know()
        old.orphans, old.retired = list(old.providers.values()), True
        self._maybe_close(old)
        return live.policy.version

    def drop_canary(self, what: str, reason: str) -> None:
        self._end_canary(what, reason)
        self._know()

    def _end_canary(self, what: str, reason: str) -> None:
        canary, self.canary = self.canary, None
        self.last_canary = canary.outcome(what, reason)
        log_fn = log.warning if what == "auto-dropped" else log.info
        log_fn("canary %s %s: %s; every request goes to %s", canary.live.policy.version, what, reason,
               self.live.policy.version)
        live = canary.live
        live.orphans, live.retired = list(live.providers.values()), True
        self._maybe_close(live)

    def _know(self) -> None:
        """The metrics' label values: what the live policy names, and the canary's too."""
        policies = [self.live.policy] + ([self.canary.live.policy] if self.canary else [])
        self.metrics.know([m for p in policies for m in p.models()],
                          {n: s for p in policies for n, s in p.providers.items()},
                          [m for p in policies for m in p.model_ids()])

    def end(self, live: Live) -> None:
        live.inflight -= 1
        if live.retired:
            self._maybe_close(live)

    def _maybe_close(self, live: Live) -> None:
        if live.inflight > 0 or not live.orphans:
            return
        orphans, live.orphans = live.orphans, []
        for provider in orphans:
            asyncio.get_running_loop().create_task(provider.close())

    async def close(self) -> None:
        if self.live is not None:
            for provider in self.live.providers.values():
                await provider.close()
        if self.canary is not None:
            for provider in self.canary.live.providers.values():
                await provider.close()
        if self.tools is not None:
            await self.tools.close()
        if self.limiter is not None:
            await self.limiter.close()
        await self.health.close()
        if self.shared is not None:
            await self.shared.close()

    # ---- the end of every request -------------------------------------------------------

    async def finish(self, call) -> None:
        try:
            if self.limiter is not None and call.admission is not None:
                await self.limiter.settle(call)
        except Exception:
            log.exception("settling limits failed")
        finally:
            self.end(call.live)
            self.record(call)

    def record(self, call, *, status: int | None = None) -> None:
        status = status or call.status
        seconds = time.monotonic() - call.started
        d = call.decision
        canary = self.canary
        if canary is not None and (verdict := canary.tally(call.live, status)) is not None:
            self.drop_canary("auto-dropped", verdict)
        self.metrics.request(call.route, status, call.cache, seconds, d.tags if d else ())
        self.metrics.operation(call, status, seconds, call.usage if call.route else None, _price(call))
        if self.tracer is not None:
            self.tracer.record(call, status, seconds)
        level = d.log if d else "meta"
        if self.request_log is not None and level != "none":
            self.request_log.add(build_row(call, status, seconds, time.time()))
        if level == "none" or not access_log.isEnabledFor(logging.INFO):
            return
        entry = {
            "status": status, "kind": call.kind, "route": call.route, "attempts": call.attempts,
            "cache": call.cache, "key": call.key, "rules": list(d.matched) if d else [],
            "tags": list(d.tags) if d else [], "ms": round(seconds * 1000, 2),
            "policy": call.live.policy.version,
        }
        if call.live.canary:
            entry["canary"] = True
        if call.usage:
            entry["usage"] = call.usage
        if call.error:
            entry["error"] = call.error
        if call.hedged:   # hedge attempts cancelled by a faster one: started, so maybe paid (their prompt)
            entry["hedged"] = hedged_attempts(call)
        if level == "full":
            entry["request"] = call.body
        try:
            line = orjson.dumps(entry)
        except orjson.JSONEncodeError:   # never expected (bodies are validated), never fatal here
            entry.pop("request", None)
            line = orjson.dumps(entry)
        if level == "full":   # the body as sent: a client may have pasted a key into it
            line = policy_redactor(call.live.policy).bytes(line)
        access_log.info(line.decode())


def log_refused(path: str, status: int, message: str, version: str, rid: str) -> None:
    """The access line of a request refused before its decision (bad key, malformed body):
    README promises one line per request, these included."""
    if access_log.isEnabledFor(logging.INFO):
        entry = {"status": status, "kind": "", "route": "", "attempts": 0, "cache": "BYPASS", "key": "",
                 "rules": [], "tags": [], "ms": 0.0, "policy": version, "path": path, "error": message,
                 "request_id": rid}
        access_log.info(orjson.dumps(entry).decode())


def _price(call):
    """The answering model's price, None when its provider has no price for it."""
    provider, _, model = call.route.partition("/")
    provider = call.live.providers.get(provider)
    return provider.spec.price(model) if provider is not None else None
