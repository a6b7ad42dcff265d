"""The tool gateway: every server's and API's tools as SERVER__TOOL, filtered per caller, and each
call decided by the tool rules, limited, sent with timeout, retries and a circuit breaker, logged
and counted."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase

import mcp.types as types
import orjson

from ..gateway.redact import policy_redactor
from ..gateway.router import Health
from ..lang.spec import DEFAULT_RETRY_CODES, TOOL_SEPARATOR, KeySpec
from ..observe.requestlog import tool_row
from .limits import ToolLimits
from .openapi import ApiUpstream
from .upstream import ToolFailure, build_mcp

log = logging.getLogger("edgerules.tools")
access_log = logging.getLogger("edgerules.access")

TOOL_RETRY_CODES = frozenset({"connect", "5xx"})   # retried by default: the call surely did not run


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, as the /mcp endpoint authenticated them."""

    key: str                    # the key's name; "" when the gateway is open
    spec: KeySpec | None
    headers: dict               # lower-cased request headers
    ip: str


class ToolGateway:
    def __init__(self, gw):
        self.gw = gw
        self.upstreams: dict = {}
        self.health = Health()      # breakers keyed by server name, apart from the providers'
        self.limits = ToolLimits(gw)

    # ---- servers, kept across reloads -------------------------------------------------------

    def install(self, policy) -> dict:
        changed = {"added": [], "removed": [], "replaced": []}
        old, new = self.upstreams, {}
        for name, spec in policy.servers.items():
            prev = old.get(name)
            if prev is not None and prev.spec.kind == spec.kind and prev.spec.identity() == spec.identity() \
                    and spec.kind == "mcp":
                prev.spec = spec        # same session; timeout and cooldown may have changed
                prev.refresh()
                new[name] = prev
                continue
            up = build_mcp(spec) if spec.kind == "mcp" else ApiUpstream(spec)
            up.start()
            new[name] = up
            changed["added" if prev is None else "replaced"].append(name)
        changed["removed"] = [n for n in old if n not in new]
        self.upstreams = new
        for name, up in old.items():
            if new.get(name) is not up:
                asyncio.get_running_loop().create_task(up.close())
        if any(changed.values()):
            log.info("tool servers: %s", {k: v for k, v in changed.items() if v})
        return changed

    async def close(self) -> None:
        ups, self.upstreams = self.upstreams, {}
        for up in ups.values():
            await up.close()
        await self.health.close()

    def status(self) -> dict:
        """What GET /admin/policy shows of the tool side (no header or key value: secrets)."""
        servers = {}
        redactor = policy_redactor(self.gw.live.policy)
        for name, up in self.upstreams.items():
            spec = up.spec
            servers[name] = {"kind": spec.kind, "url": getattr(spec, "url", None),
                             "builtin": getattr(spec, "builtin", None), "tools": [t.name for t in up.tools],
                             "connected": up.connected.is_set(),
                             "last_error": redactor.message(up.last_error) if up.last_error else None}
        return {"tool_rules": list(self.gw.live.policy.tool_rules), "tool_servers": servers,
                "tool_health": self.health.snapshot(), "tool_warnings": self.warnings()}

    def warnings(self) -> list[str]:
        """Key globs that match none of the tools the servers list now (known only at run time)."""
        names = [f"{s}{TOOL_SEPARATOR}{t.name}" for s, up in self.upstreams.items() for t in up.tools]
        out = []
        for key in self.gw.live.policy.keys:
            for glob in key.tools or ():
                if not any(fnmatchcase(n, glob) for n in names):
                    out.append(f"key '{key.name}': tools glob '{glob}' matches no tool the servers list now")
        return out

    # ---- tools/list -------------------------------------------------------------------------

    def list_for(self, caller: Caller) -> list[types.Tool]:
        policy = self.gw.live.policy
        decide = policy.evaluate_tool
        now = time.time()
        out = []
        for server, up in self.upstreams.items():
            for tool in up.tools:
                name = f"{server}{TOOL_SEPARATOR}{tool.name}"
                if caller.spec is not None and not caller.spec.sees_tool(name):
                    continue
                if decide is not None and decide(server, tool.name, {}, caller.headers, caller.key,
                                                 caller.ip, now).hide:
                    continue
                out.append(tool.model_copy(update={"name": name}))
        return out

    # ---- tools/call -------------------------------------------------------------------------

    async def call(self, name: str, arguments: dict | None, caller: Caller) -> types.CallToolResult:
        started = time.monotonic()
        arguments = arguments if isinstance(arguments, dict) else {}
        policy = self.gw.live.policy
        server, _, tool = name.partition(TOOL_SEPARATOR)
        up = self.upstreams.get(server)
        entry = {"kind": "tool", "key": caller.key, "server": server, "tool": tool, "policy": policy.version}
        decision = None
        try:
            if up is None or not any(t.name == tool for t in up.tools) or \
                    (caller.spec is not None and not caller.spec.sees_tool(name)):
                return self._refuse(entry, "unknown", f"unknown tool '{name}'")
            decision = policy.decide_tool(server, tool, arguments, caller.headers, caller.key, ip=caller.ip)
            entry["rules"] = list(decision.matched)
            if decision.hide:
                return self._refuse(entry, "unknown", f"unknown tool '{name}'")
            if decision.deny is not None:
                return self._refuse(entry, "denied", decision.deny)
            refusal = await self.limits.admit(decision)
            if refusal is not None:
                return self._refuse(entry, "limited", refusal)
            result = await self._forward(up, tool, arguments, decision, entry)
            redactor = policy_redactor(policy)
            if redactor:
                blob = result.model_dump_json(by_alias=True, exclude_none=True)
                clean = redactor.text(blob)
                if clean != blob:
                    result = types.CallToolResult.model_validate_json(clean)
            entry.setdefault("decision", "call")
            entry.setdefault("status", "error" if result.isError else "ok")
            return result
        finally:
            entry["ms"] = round((time.monotonic() - started) * 1000, 2)
            self._record(entry, decision, arguments)

    async def _forward(self, up, tool: str, arguments: dict, decision, entry: dict) -> types.CallToolResult:
        spec = up.spec
        timeout = decision.timeout or spec.timeout
        retry = decision.retry
        codes = TOOL_RETRY_CODES if retry is None or retry.on == DEFAULT_RETRY_CODES else retry.on
        attempts = 1 + (retry.attempts if retry is not None else 0)
        health = self.health.of(spec.name)
        failure = None
        for attempt in range(1, attempts + 1):
            now = time.monotonic()
            if not health.available(now):
                wait = max(1, int(health.open_until - now + 0.999))
                entry.update(decision="call", status="unavailable", attempts=attempt - 1)
                return _error(f"server '{spec.name}' is unavailable (circuit open after repeated failures); "
                              f"retry in {wait}s")
            if attempt > 1:
                await asyncio.sleep(retry.delay_for(attempt - 1))
            try:
                result = await up.call(tool, arguments, timeout)
            except ToolFailure as exc:
                failure = exc
                if health.record_failure(spec, time.monotonic()):
                    log.warning("server '%s': circuit open for %gs after %d failures", spec.name,
                                spec.cooldown, spec.failures)
                if not _retries(codes, exc):
                    break
                continue
            health.record_success("", time.monotonic() - now)
            entry["attempts"] = attempt
            return result
        entry.update(decision="call", status="failed", attempts=attempt,
                     error=policy_redactor(self.gw.live.policy).message(str(failure)))
        return _error(entry["error"])

    def _refuse(self, entry: dict, decision: str, message: str) -> types.CallToolResult:
        entry.update(decision=decision, status="refused", error=message)   # the row keeps why
        return _error(message)

    def _record(self, entry: dict, decision, arguments: dict) -> None:
        self.gw.metrics.tool_call(entry["server"], entry.get("decision", "unknown"), entry.get("status", "error"),
                                  entry["ms"] / 1000)
        level = decision.log if decision is not None else "meta"
        if self.gw.request_log is not None and level != "none":
            self.gw.request_log.add(tool_row(entry, decision, arguments, policy_redactor(self.gw.live.policy),
                                             time.time()))
        if level == "none" or not access_log.isEnabledFor(logging.INFO):
            return
        if decision is not None and decision.tags:
            entry["tags"] = list(decision.tags)
        if level == "full":
            entry["arguments"] = arguments
        try:
            line = orjson.dumps(entry).decode()
        except orjson.JSONEncodeError:
            entry.pop("arguments", None)
            line = orjson.dumps(entry).decode()
        redactor = policy_redactor(self.gw.live.policy)
        access_log.info(redactor.text(line) if redactor else line)


def _retries(codes, exc: ToolFailure) -> bool:
    if exc.kind == "status":
        return str(exc.status) in codes or f"{exc.status // 100}xx" in codes
    return exc.kind in codes


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], isError=True)
