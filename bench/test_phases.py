"""Phases 1 and 2: parse, then check+compile, for the shipped rules/ and synthetic policies.

Phase 3 (decide) is bench/test_decide_throughput.py. Phase 4 (a whole request through the
gateway) is a placeholder at the bottom of this file until the gateway exists.
"""
from __future__ import annotations

import pytest

from conftest import SIZES, check_and_compile, make_policy, merge, run
from edgerules.lang.parse import parse_source
from edgerules.lang.policy import version_of
from edgerules.drills.synth import synthetic_policy

POLICIES = ("rules/", *SIZES)


def _rule_count(programs) -> int:
    return sum(len(p.rules) for p in programs)


@pytest.mark.parametrize("which", POLICIES)
def test_parse(benchmark, corpus, which):
    benchmark.group = "1. parse"
    sources = corpus.sources(which)

    def parse_all():
        return [parse_source(s) for s in sources]

    results = run(benchmark, which, parse_all)
    assert all(not errors for _, errors in results)
    programs = [program for program, _ in results]
    corpus.programs.setdefault(which, programs)
    if which != "rules/":
        assert _rule_count(programs) == which


@pytest.mark.parametrize("which", POLICIES)
def test_check_and_compile(benchmark, corpus, which):
    benchmark.group = "2. check+compile"
    sources = corpus.sources(which)
    program, version = merge(corpus.program(which)), version_of(sources)
    built = run(benchmark, which, check_and_compile, program, version)
    policy = corpus.policies.setdefault(which, make_policy(sources, *built))
    assert policy.rules and "def decide(" in policy.source()


def test_synthetic_policy_is_deterministic():
    assert synthetic_policy(100) == synthetic_policy(100)
    assert synthetic_policy(100, seed=1) != synthetic_policy(100)
