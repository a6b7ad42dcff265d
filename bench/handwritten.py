"""engine.synth.ten_rule_policy() written by hand in plain Python: the practical CPython limit.

The fastest straightforward code a person would write for those ten rules, returning the same
Decision as the compiled policy (bench/test_decide_throughput.py asserts it on sample requests,
so the two cannot drift apart). Fields are read only when a rule needs them, and the model rules
are one if/elif chain.
"""
from __future__ import annotations

from edgerules.lang.decision import Decision
from edgerules.lang.schema import estimate_tokens
from edgerules.lang.spec import CacheSpec, Fallback, LimitSpec, RetrySpec, Single, Split

TIER_FREE = LimitSpec("tier_free#0", "tier_free", "requests", 60, 60, ("key",))
CACHE_DETERMINISTIC = CacheSpec("cache_deterministic", 600.0)
ROUTE_0 = Single("p0", "model-0")
RETRY_1 = RetrySpec(2, "constant", 0.1)
ROUTE_1 = Fallback((Single("p0", "model-1"), Single("p1", "model-1")))
HOT_2 = LimitSpec("hot_2#0", "hot_2", "tokens", 20_000, 60, ("key",))
ROUTE_3 = Single("p0", "model-3")
CACHE_4 = CacheSpec("split_4", 300.0, ("key",))
ROUTE_4 = Split((80.0, 20.0), (Single("p0", "model-4"), Single("p1", "model-4")), False, 1)
RETRY_CATCH_ALL = RetrySpec(1, "constant", 0.05)
ROUTE_CATCH_ALL = Fallback((Single("p0"), Single("p2")))
ALIAS_1 = frozenset(("model-1", "alias-1"))
SPLIT_4 = frozenset(("model-4", "alias-4", "model-4-latest"))


def decide(body, headers, key, path, method, ip, now):
    d = Decision()
    m = d.matched = []
    if estimate_tokens(body) > 8000:
        m.append("guard_huge_prompt")
        d.deny = (413, "prompt is larger than 8k tokens")
        d.rule = "guard_huge_prompt"
        return d
    stream = body.get("stream") is True
    if stream and headers.get("x-client") == "batch":
        m.append("guard_batch_stream")
        d.deny = (400, "batch clients must not stream")
        d.rule = "guard_batch_stream"
        return d
    if headers.get("x-plan") == "free":
        m.append("tier_free")
        d.limits = ((TIER_FREE, (key,)),)
        d.tags = ("free",)
    temperature = body.get("temperature")
    if temperature == 0 and not stream:
        m.append("cache_deterministic")
        d.cache = CACHE_DETERMINISTIC
    model = body.get("model") or ""
    if model == "model-0":
        m.append("route_0")
        d.route = ROUTE_0
        d.rule = "route_0"
        return d
    if model in ALIAS_1:
        m.append("alias_1")
        d.retry = RETRY_1
        d.route = ROUTE_1
        d.rule = "alias_1"
        return d
    if model == "model-3":
        if temperature is not None and temperature > 1:
            m.append("hot_2")
            d.limits += ((HOT_2, (key,)),)
            d.tags += ("hot",)
        m.append("slow_3")
        d.timeout = 20.0
        d.route = ROUTE_3
        d.rule = "slow_3"
        return d
    if model in SPLIT_4:
        m.append("split_4")
        d.cache = CACHE_4
        d.cache_by = (key,)
        d.route = ROUTE_4
        d.rule = "split_4"
        return d
    m.append("catch_all")
    d.retry = RETRY_CATCH_ALL
    d.route = ROUTE_CATCH_ALL
    d.rule = "catch_all"
    return d
