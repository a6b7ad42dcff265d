"""Routing plans: split weights, sticky splits, fallback skipping open circuits, fastest by latency."""
from __future__ import annotations

import random

from edgerules.gateway.router import Health, plan, resolve_model
from edgerules.lang.spec import Fallback, Fastest, ProviderSpec, Single, Split

A, B, C = Single("a", "m1"), Single("b", "m2"), Single("c", None)


def test_split_follows_the_weights_within_two_points():
    split = Split((80.0, 20.0), (A, B), False, 1)
    rng = random.Random(7)
    health = Health()
    picks = [plan(split, "x", None, health, 0.0, rng)[0][0] for _ in range(10_000)]
    share = picks.count("a") / len(picks) * 100
    assert abs(share - 80) <= 2


def test_three_way_split_weights():
    split = Split((50.0, 30.0, 20.0), (A, B, C), False, 1)
    rng = random.Random(11)
    picks = [plan(split, "x", None, Health(), 0.0, rng)[0][0] for _ in range(10_000)]
    for name, weight in (("a", 50), ("b", 30), ("c", 20)):
        assert abs(picks.count(name) / 100 - weight) <= 2


def test_sticky_split_is_stable_per_key_and_spreads_keys():
    split = Split((50.0, 50.0), (A, B), True, 3)
    health = Health()
    first = {k: plan(split, "x", {3: (k,)}, health, 0.0)[0] for k in map(str, range(2000))}
    again = {k: plan(split, "x", {3: (k,)}, health, 0.0, random.Random(99))[0] for k in first}
    assert first == again
    share = sum(1 for v in first.values() if v[0] == "a") / len(first) * 100
    assert abs(share - 50) <= 5


def test_fallback_order_and_skipping_open_circuits():
    target = Fallback((A, B, C))
    health = Health()
    assert plan(target, "req", None, health, 0.0) == [("a", "m1"), ("b", "m2"), ("c", "req")]
    spec = ProviderSpec("a", url="http://x", cooldown=30.0, failures=2)
    health.of("a").record_failure(spec, 100.0)
    assert plan(target, "req", None, health, 100.0)[0] == ("a", "m1")   # one failure: still closed
    assert health.of("a").record_failure(spec, 100.0) is True             # second opens it
    assert plan(target, "req", None, health, 101.0) == [("b", "m2"), ("c", "req")]
    assert plan(target, "req", None, health, 131.0)[0] == ("a", "m1")   # cooldown over


def test_fallback_tries_everyone_when_all_circuits_are_open():
    health = Health()
    for name in ("a", "b"):
        spec = ProviderSpec(name, url="http://x", failures=1)
        health.of(name).record_failure(spec, 0.0)
    assert plan(Fallback((A, B)), "r", None, health, 1.0) == [("a", "m1"), ("b", "m2")]


def test_fastest_orders_by_recent_latency_then_unhealthy():
    health = Health()
    health.of("a").record_success("m1", 0.200)
    health.of("b").record_success("m2", 0.050)
    assert plan(Fastest((A, B)), "r", None, health, 0.0) == [("b", "m2"), ("a", "m1")]
    for _ in range(10):                       # a gets faster: the EWMA follows
        health.of("a").record_success("m1", 0.010)
    assert plan(Fastest((A, B)), "r", None, health, 0.0)[0] == ("a", "m1")
    health.of("a").record_failure(ProviderSpec("a", url="http://x", failures=1), 0.0)
    assert plan(Fastest((A, B)), "r", None, health, 1.0) == [("b", "m2"), ("a", "m1")]


def test_nested_targets_flatten_in_order():
    target = Split((100.0,), (Fallback((A, Fastest((B, C)))),), False, 1)
    assert [p for p, _ in plan(target, "r", None, Health(), 0.0)] == ["a", "b", "c"]


def test_passthrough_model_drops_its_own_provider_prefix():
    assert resolve_model(Single("openai", None), "openai/gpt-4o") == "gpt-4o"
    assert resolve_model(Single("openai", None), "gpt-4o") == "gpt-4o"
    assert resolve_model(Single("openai", None), "other/gpt-4o") == "other/gpt-4o"
