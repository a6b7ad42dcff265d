"""Decisions and their parts written back in the rule language's own words, for messages."""
from __future__ import annotations

import json
import re

from ..lang.spec import Fallback, Fastest, Hedge, Single, Split, Target

_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))
_BARE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def duration_text(seconds: float) -> str:
    for unit, size in _UNITS:
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    ms = seconds * 1000
    return f"{int(ms)}ms" if ms.is_integer() else f"{seconds:g}s"


def number_text(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def target_text(target: Target) -> str:
    if isinstance(target, Single):
        if target.model is None:
            return target.provider
        if _BARE.fullmatch(target.model):
            return f"{target.provider}/{target.model}"
        return f'"{target.provider}/{target.model}"'
    if isinstance(target, Split):
        members = ", ".join(f"{number_text(w)}% {target_text(m)}" for w, m in zip(target.weights, target.members))
        return f"split [{members}]" + (" by ..." if target.sticky else "")
    if isinstance(target, Hedge):
        after = f"p{target.percentile:g}" if target.percentile is not None else duration_text(target.delay)
        return f"hedge [{', '.join(target_text(m) for m in target.members)}] after {after}"
    word = "fallback" if isinstance(target, Fallback) else "fastest"
    assert isinstance(target, (Fallback, Fastest))
    return f"{word} [{', '.join(target_text(m) for m in target.members)}]"


def outcome_text(decision) -> str:
    """What a decision does with the request: deny, route or error."""
    if decision.deny is not None:
        return f"deny {decision.deny[0]}"
    if decision.route is not None:
        implicit = " (from the model name)" if decision.implicit else ""
        return f"route {target_text(decision.route)}{implicit}"
    if decision.error is not None:
        return f"error {decision.error[0]}"
    return "no outcome"


def tool_outcome_text(decision, unseen: bool = False, key: str = "") -> str:
    """What the tool gateway does with a tool call: hide, deny or allow (with the rule that decided)."""
    if unseen:
        return f"hide (key '{key}' does not see the tool)"
    if decision.hide:
        return f"hide (rule {decision.rule})"
    if decision.deny is not None:
        return f"deny {json.dumps(decision.deny)} (rule {decision.rule})"
    return "allow"


def cache_text(decision) -> str:
    if decision.cache is None:
        return "no cache"
    if not decision.cache.enabled:
        return "cache off"
    semantic = decision.cache.semantic
    if semantic is not None:
        return (f"cache semantic {semantic.threshold:g} ttl {duration_text(decision.cache.ttl)} "
                f"using {semantic.provider}/{semantic.model}")
    return f"cache ttl {duration_text(decision.cache.ttl)}"
