"""The compiled decision function against the reference interpreter, on random policies and requests."""
from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerules.lang.errors import PolicyError
from edgerules.lang.policy import build_policy
from edgerules.lang.source import Source
from policy_strategies import ENV, MODELS, policies, random_request, requests

REQUESTS_PER_POLICY = 100
SETTINGS = settings(max_examples=150, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def build(text: str):
    try:
        return build_policy([Source("random.rules", text)], ENV)
    except PolicyError as exc:  # the strategies only write well-formed policies
        pytest.fail(f"a generated policy did not load:\n{exc}\n---\n{text}")


def assert_same(policy, text: str, args: tuple) -> None:
    compiled = policy.evaluate(*args).to_dict()
    interpreted = policy.interpret(*args).to_dict()
    if compiled != interpreted:
        pytest.fail(f"compiled and interpreted decisions differ\nrequest: {args!r}\n"
                    f"compiled:    {compiled}\ninterpreted: {interpreted}\n--- policy\n{text}\n"
                    f"--- generated\n{policy.source()}")


@SETTINGS
@given(text=policies(), some=st.lists(requests(), min_size=1, max_size=8), seed=st.integers(0, 2**32))
def test_compiled_equals_interpreted(text, some, seed):
    policy = build(text)
    for args in some:
        assert_same(policy, text, args)
    rng = random.Random(seed)
    for _ in range(REQUESTS_PER_POLICY):
        assert_same(policy, text, random_request(rng))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=policies(max_groups=3), seed=st.integers(0, 2**32))
def test_decide_validates_then_agrees(text, seed):
    """Policy.decide with either engine: same answer, headers matched case-insensitively."""
    policy = build(text)
    rng = random.Random(seed)
    for _ in range(40):
        body, headers, key, path, method, ip, now = random_request(rng)
        shouted = {name.upper(): value for name, value in headers.items()}
        kwargs = dict(path=path, method=method, ip=ip, now=now)
        compiled = policy.decide(body, shouted, key, engine="compiled", **kwargs).to_dict()
        interpreted = policy.decide(body, headers, key, engine="interpreted", **kwargs).to_dict()
        assert compiled == interpreted


def test_dispatch_index_is_exercised_by_the_strategies():
    """A long run of `model ==` rules is compiled to a dict lookup and still agrees."""
    rules = "\n".join(f'rule m{i} {{ when model == "{m}" tag "t{i}" }}' for i, m in enumerate(MODELS))
    text = "provider demo { format echo }\n" + rules + "\nrule last { route demo }\n"
    policy = build(text)
    assert "_D1 = {" in policy.source()
    rng = random.Random(7)
    for _ in range(300):
        assert_same(policy, text, random_request(rng))
    for i, model in enumerate(MODELS):
        d = policy.evaluate({"model": model}, {}, "", "/", "POST", "", 0.0)
        assert d.tags == (f"t{i}",)
        assert d.matched == [f"m{i}", "last"]
