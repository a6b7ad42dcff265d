"""Canary rollout: a second policy served to a sticky share of traffic, with its own error tally.

A request's share is decided by a hash of its authenticated key name (of the client's address when
the gateway is open), salted with the canary's version: the same key always lands on the same
side of one canary, and each new canary picks a different set of keys to go first. The hash runs
only while a canary exists.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..lang.errors import PolicyError
from ..lang.policy import load_policy
from .errors import GatewayError, error_response

log = logging.getLogger("edgerules.canary")

DEFAULT_MIN_REQUESTS = 50


class Canary:
    """The canary's Live, its share, and what both versions answered since it started."""

    def __init__(self, live, percent: float, max_error_rate: float | None = None,
                 min_requests: int = DEFAULT_MIN_REQUESTS):
        self.live = live
        self.percent = percent
        self.max_error_rate = max_error_rate
        self.min_requests = min_requests
        self.started_at = time.time()
        self.salt = live.policy.version.encode() + b":"
        self.requests = self.errors = 0                 # the canary's
        self.stable_requests = self.stable_errors = 0   # the stable's, over the same period

    def bucket(self, value: str) -> int:
        """0-99, the same in every process (unlike hash(), which is salted per process)."""
        digest = hashlib.blake2b(self.salt + value.encode("utf-8", "surrogateescape"), digest_size=8).digest()
        return int.from_bytes(digest, "big") % 100

    def pick(self, stable, credential: str | None, ip: str):
        """The Live that answers this request. A credential the stable policy refuses is tried on
        the canary's keys (a key only the canary declares); one both refuse gets the stable's 401."""
        try:
            key = stable.keyring.authenticate(credential)
        except GatewayError:
            try:
                key = self.live.keyring.authenticate(credential)
            except GatewayError:
                return stable
        return self.live if self.bucket(key or ip) < self.percent else stable

    def tally(self, live, status: int) -> str | None:
        """Count one finished request; the reason to drop the canary when it must go."""
        if live is self.live:
            self.requests += 1
            if status >= 500:
                self.errors += 1
                return self._verdict()
        elif not live.canary:
            self.stable_requests += 1
            if status >= 500:
                self.stable_errors += 1
        return None

    def _verdict(self) -> str | None:
        if self.max_error_rate is None or self.requests < self.min_requests:
            return None
        mine, theirs = self.errors / self.requests, _rate(self.stable_errors, self.stable_requests)
        if mine - theirs > self.max_error_rate:
            return (f"5xx rate {mine:.1%} over {self.requests} requests exceeds the stable's "
                    f"{theirs:.1%} by more than max_error_rate {self.max_error_rate:g}")
        return None

    def status(self) -> dict:
        policy = self.live.policy
        return {"version": policy.version, "path": policy.path, "percent": self.percent,
                "requests": self.requests, "5xx": self.errors, "error_rate": _rate(self.errors, self.requests),
                "max_error_rate": self.max_error_rate, "min_requests": self.min_requests,
                "started_at": self.started_at, "rules": list(policy.rules),
                "health": self.live.health.snapshot() if self.live.health is not None else None,
                "warnings": [d.to_dict() for d in policy.warnings]}

    def stable_status(self) -> dict:
        return {"requests": self.stable_requests, "5xx": self.stable_errors,
                "error_rate": _rate(self.stable_errors, self.stable_requests)}

    def outcome(self, what: str, reason: str) -> dict:
        """The record GET /admin/policy keeps as `last_canary`."""
        return {"outcome": what, "reason": reason, "at": time.time(), "version": self.live.policy.version,
                "path": self.live.policy.path, "percent": self.percent, "requests": self.requests,
                "5xx": self.errors, "error_rate": _rate(self.errors, self.requests),
                "stable": self.stable_status()}


def _rate(errors: int, requests: int) -> float:
    return round(errors / requests, 4) if requests else 0.0


# ---- the settings of one canary, from a request body or from `serve --canary` -----------------

def parse_percent(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise ValueError(f"'percent' must be a number from 0 to 100, not {value!r}")
    return float(value)


def parse_error_rate(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"'max_error_rate' must be a fraction from 0 to 1 (0.05 is five points), not {value!r}")
    return float(value)


def parse_min_requests(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"'min_requests' must be a whole number of at least 1, not {value!r}")
    return value


def _options(body) -> dict:
    if not isinstance(body, dict):
        raise GatewayError(400, "the body must be a JSON object: {\"path\": DIR, \"percent\": 5}")
    unknown = sorted(set(body) - {"path", "percent", "max_error_rate", "min_requests", "force"})
    if unknown:
        raise GatewayError(400, f"unknown field '{unknown[0]}' (path, percent, max_error_rate, "
                                "min_requests, force)", param=unknown[0])
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise GatewayError(400, "'path' must name the canary policy: a directory of .rules or one file",
                           param="path")
    out = {"path": path}
    for name, parse, default in (("percent", parse_percent, None), ("max_error_rate", parse_error_rate, None),
                                 ("min_requests", parse_min_requests, DEFAULT_MIN_REQUESTS)):
        if name == "percent" and name not in body:
            raise GatewayError(400, "'percent' is required: the share of traffic, 0-100", param="percent")
        try:
            out[name] = parse(body.get(name, default))
        except ValueError as exc:
            raise GatewayError(400, str(exc), param=name) from None
    out["force"] = body.get("force") is True
    return out


# ---- admin endpoints (behind the admin guard, see server.py) --------------------------------

def _json(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def start(request: Request) -> Response:
    """POST /admin/canary: load a policy and serve it to `percent` of traffic (replacing a canary)."""
    try:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise GatewayError(400, f"the body is not JSON: {exc}") from None
        options = _options(body)
    except GatewayError as err:
        return error_response(err)
    gw = request.app.state.gw
    try:
        policy = await asyncio.to_thread(load_policy, options["path"])
    except PolicyError as exc:
        return _refused(exc)
    except OSError as exc:
        return error_response(GatewayError(422, f"cannot read the canary policy: {exc.strerror or exc}",
                                           code="canary_invalid", param="path"))
    from .reload import _dropped_everything
    dropped = _dropped_everything(gw.live.policy, policy)
    if dropped and not options["force"]:
        return error_response(GatewayError(
            422, f"refused: the canary policy has no {dropped} while the live one has some; "
                 "if that is meant, send \"force\": true", code="canary_refused", param="path"))
    canary = gw.start_canary(policy, options["percent"], options["max_error_rate"], options["min_requests"])
    log.warning("canary %s from %s serves %g%% of traffic (stable %s)%s", policy.version, policy.path,
                canary.percent, gw.live.policy.version,
                f"; dropped if its 5xx rate exceeds the stable's by {canary.max_error_rate:g} "
                f"over {canary.min_requests} requests" if canary.max_error_rate is not None else "")
    return _json({"ok": True, "stable": gw.live.policy.version, "canary": canary.status(), **_scope(request)})


def _refused(exc: PolicyError) -> Response:
    errors = [d for d in exc.diagnostics if d.severity == "error"]
    first = errors[0] if errors else None
    err = GatewayError(422, f"the canary policy did not load; nothing changed:\n{exc}", code="canary_invalid",
                       param="path")
    response = error_response(err)
    payload = orjson.loads(response.body)
    payload["error"]["diagnostics"] = [d.to_dict() for d in exc.diagnostics]
    payload["error"]["location"] = str(first.location) if first and first.location else None
    return Response(orjson.dumps(payload), status_code=422, media_type="application/json")


async def promote(request: Request) -> Response:
    """POST /admin/canary/promote: the canary becomes the stable policy; the watcher follows its path."""
    gw = request.app.state.gw
    if gw.canary is None:
        return _no_canary()
    reloader = request.app.state.reloader
    version = await reloader.follow(gw.canary.live.policy.path,
                                    lambda: gw.promote_canary() if gw.canary is not None else None)
    if version is None:   # dropped (by its error rate) while the promotion waited for a reload
        return _no_canary()
    log.warning("canary %s promoted: it is the live policy; reloads now watch %s", version,
                reloader.path)
    return _json({"ok": True, "version": version, "path": reloader.path,
                  "last_canary": gw.last_canary, **_scope(request)})


async def drop(request: Request) -> Response:
    """DELETE /admin/canary: every request goes back to the stable policy."""
    gw = request.app.state.gw
    if gw.canary is None:
        return _no_canary()
    gw.drop_canary("dropped", "DELETE /admin/canary")
    return _json({"ok": True, "version": gw.live.policy.version, "last_canary": gw.last_canary,
                  **_scope(request)})


def _no_canary() -> Response:
    return error_response(GatewayError(404, "no canary is being served", code="no_canary"))


def _scope(request: Request) -> dict:
    """With --workers, a canary lives in the worker that took the admin request: the answer says which."""
    import os
    return {"worker": os.getpid()} if request.app.state.fanout is not None else {}
