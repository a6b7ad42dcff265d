"""Phase 3: decide. Compiled vs interpreter on rules/ and synthetic policies; on the 10-rule
policy also the hand-written baseline and the peers that are installed.

Each round decides the same SAMPLE requests; extra_info carries how many, so decisions/s is
SAMPLE / the round's time. The equality tests keep every contender honest: same requests, same
answer.
"""
from __future__ import annotations

import functools

import pytest

import handwritten
import peers
from conftest import SAMPLE, SIZES, run
from edgerules.drills.benchmark import decide_args
from edgerules.drills.synth import synthetic_requests

POLICIES = ("rules/", *SIZES)


def _rounds(fn, calls):
    def one_round():
        for args in calls:
            fn(*args)
    return one_round


@pytest.mark.parametrize("engine", ("compiled", "interpreter"))
@pytest.mark.parametrize("which", POLICIES)
def test_decide(benchmark, corpus, which, engine):
    benchmark.group = f"3. decide: {which if which == 'rules/' else f'{which} rules'}"
    benchmark.extra_info["decisions_per_round"] = SAMPLE
    policy = corpus.policy(which)
    fn = policy.evaluate if engine == "compiled" else policy.interpret
    run(benchmark, which if engine == "interpreter" else 0, _rounds(fn, corpus.calls(which)))


def test_decide_handwritten(benchmark, corpus):
    benchmark.group = "3. decide: 10 rules"
    benchmark.extra_info["decisions_per_round"] = SAMPLE
    benchmark(_rounds(handwritten.decide, corpus.calls(10)))


@pytest.mark.parametrize("name", tuple(peers.PEERS))
def test_decide_peer(benchmark, corpus, name):
    benchmark.group = "3. decide: 10 rules"
    benchmark.extra_info["decisions_per_round"] = SAMPLE
    fn = _peer(name)
    benchmark(_rounds(fn, corpus.calls(10)))


# ---- the contenders agree with the compiled policy ---------------------------------------------

@pytest.fixture(scope="module")
def many_calls():
    return decide_args(synthetic_requests(1_000, seed=7), 1_750_000_000.0)


def test_handwritten_decides_like_the_compiled_policy(corpus, many_calls):
    policy = corpus.policy(10)
    for args in many_calls:
        assert handwritten.decide(*args).to_dict() == policy.evaluate(*args).to_dict(), args[:3]


@pytest.mark.parametrize("name", tuple(peers.PEERS))
def test_peer_matches_like_the_compiled_policy(corpus, many_calls, name):
    fn = _peer(name)
    policy = corpus.policy(10)
    calls = many_calls if name != "cel-python" else many_calls[:100]  # about 1.5 ms a decision
    for args in calls:
        assert fn(*args) == policy.evaluate(*args).matched, args[:3]


@pytest.mark.parametrize("which", ("rules/", 10, 100, 1_000))
def test_compiled_decides_like_the_interpreter(corpus, which):
    policy = corpus.policy(which)
    for args in corpus.calls(which):
        assert policy.evaluate(*args).to_dict() == policy.interpret(*args).to_dict(), args[:3]


@functools.cache
def _load_peer(name):
    """The peer's function, or the reason it is unavailable (building one can take a while)."""
    try:
        return peers.load_peer(name)
    except peers.PeerUnavailable as exc:
        return str(exc)


def _peer(name):
    fn = _load_peer(name)
    if isinstance(fn, str):
        pytest.skip(fn)
    return fn

