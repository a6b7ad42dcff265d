"""Decision: what a policy decided for one request, and its JSON form."""
from __future__ import annotations

from .spec import DEFAULT_DEADLINE, Single


class Decision:
    """The outcome of one walk over the rules.

    Defaults live on the class, so a walk stores only what it changes: that keeps building a
    decision on the hot path down to a few attribute writes.
    """

    matched: list = ()          # rule names, in the order they matched
    rule: str | None = None     # the rule that ended the walk, if any
    route = None                # a Target tree from spec.py
    route_by: dict | None = None  # split node_id -> evaluated `by` values, for sticky splits
    implicit: bool = False      # the route came from a "provider/model" name, not from a rule
    deny: tuple | None = None   # (status, message)
    error: tuple | None = None  # (status, code, message) when nothing could route the request
    limits: tuple = ()          # ((LimitSpec, by values), ...)
    cache = None                # CacheSpec of the last `cache` met
    cache_by: tuple = ()
    retry = None                # RetrySpec
    timeout: float | None = None
    deadline: float = DEFAULT_DEADLINE
    tags: tuple = ()
    log: str = "meta"

    @property
    def action(self) -> str:
        if self.deny is not None:
            return "deny"
        return "route" if self.route is not None else "none"

    def to_dict(self) -> dict:
        route = self.route.to_dict(self.route_by) if self.route is not None else None
        cache = None
        if self.cache is not None:
            cache = ({"ttl": self.cache.ttl, "by": list(self.cache.by), "values": list(self.cache_by),
                      "rule": self.cache.rule} if self.cache.enabled else "off")
            if self.cache.shared and self.cache.enabled:
                cache["shared"] = True
            if self.cache.semantic is not None:
                cache["semantic"] = self.cache.semantic.to_dict()
        out = {
            "matched": list(self.matched),
            "action": self.action,
            "rule": self.rule,
            "route": route,
            "implicit": self.implicit,
            "deny": {"status": self.deny[0], "message": self.deny[1]} if self.deny else None,
            "limits": [spec.to_dict(values) for spec, values in self.limits],
            "cache": cache,
            "retry": self.retry.to_dict() if self.retry is not None else None,
            "timeout": self.timeout,
            "deadline": self.deadline,
            "tags": list(self.tags),
            "log": self.log,
        }
        if self.error is not None:
            out["error"] = {"status": self.error[0], "code": self.error[1], "message": self.error[2]}
        return out

    def __repr__(self) -> str:
        return f"Decision({self.to_dict()!r})"


def finish_without_route(decision: Decision, model: str, providers) -> Decision:
    """The walk ended without route or deny: "provider/model" goes there, anything else is 404."""
    provider, sep, rest = model.partition("/")
    if sep and rest and provider in providers:
        decision.route = Single(provider, rest)
        decision.implicit = True
    else:
        decision.error = (404, "model_not_found",
                          f"the model '{model}' does not exist or no rule routes it" if model
                          else "no model given and no rule routes the request")
    return decision


class ToolDecision:
    """What the tool rules decided for one tool call (or, with no arguments, for listing a tool).

    Defaults on the class, as for Decision: a walk writes only what it changes."""

    matched: list = ()
    rule: str | None = None     # the rule that ended the walk (deny or hide), if any
    deny: str | None = None     # the message the agent gets as a tool error
    hide: bool = False          # not listed for this caller, refused if called
    limits: tuple = ()          # ((LimitSpec, by values), ...): `limit calls`
    retry = None                # RetrySpec
    timeout: float | None = None
    tags: tuple = ()
    log: str = "meta"

    @property
    def action(self) -> str:
        return "hide" if self.hide else "deny" if self.deny is not None else "call"

    def to_dict(self) -> dict:
        return {"matched": list(self.matched), "action": self.action, "rule": self.rule,
                "deny": {"message": self.deny} if self.deny is not None else None,
                "limits": [spec.to_dict(values) for spec, values in self.limits],
                "retry": self.retry.to_dict() if self.retry is not None else None,
                "timeout": self.timeout, "tags": list(self.tags), "log": self.log}

    def __repr__(self) -> str:
        return f"ToolDecision({self.to_dict()!r})"
