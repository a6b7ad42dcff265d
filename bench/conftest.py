"""Benchmarks by phase: parse, check+compile, decide; whole requests are the gateway's (a placeholder).

Run them with `python3 -m pytest bench` (figures) or `--benchmark-disable` (each bench once, as
CI does). `python bench/report.py` prints the comparison table in one process.

Policies are built once per session and shared: the parse bench's result seeds the cache the
check+compile bench reads, whose result seeds the policies the decide benches use, so a run
parses the 10,000-rule policy once. Benches are ordered by phase for that reason.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from edgerules.drills.benchmark import decide_args
from edgerules.lang.check import check_program
from edgerules.lang.compiler import compile_policy
from edgerules.lang.policy import Policy, read_sources, version_of
from edgerules.lang.parse import parse_source
from edgerules.lang.source import Source
from edgerules.drills.synth import policy_requests, synthetic_policy, synthetic_requests

SIZES = (10, 100, 1_000, 10_000)
SAMPLE = 64            # requests per decide round
BIG = 1_000            # from this size a bench runs a fixed, small number of rounds
ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "rules"
PHASE_ORDER = ("test_phases.py", "test_decide_throughput.py")
NOW = 1_750_000_000.0  # a fixed Tuesday 15:06 UTC, so hour/weekday rules decide alike every run


class Corpus:
    """Sources, parsed programs and policies by name ("rules/" or a synthetic size), built lazily."""

    def __init__(self):
        self.programs: dict[object, list] = {}
        self.policies: dict[object, Policy] = {}

    def sources(self, which) -> list[Source]:
        if which == "rules/":
            return read_sources(SHIPPED)
        return [Source(f"synthetic-{which}.rules", synthetic_policy(which))]

    def program(self, which):
        if which not in self.programs:
            self.programs[which] = [parse_program(s) for s in self.sources(which)]
        return self.programs[which]

    def policy(self, which) -> Policy:
        if which not in self.policies:
            self.policies[which] = make_policy(self.sources(which), *check_and_compile(
                merge(self.program(which)), version_of(self.sources(which))))
        return self.policies[which]

    def calls(self, which) -> list[tuple]:
        if which == "rules/":
            requests = policy_requests(self.policy(which), SAMPLE)
        else:
            requests = synthetic_requests(SAMPLE, n_rules=which)
        return decide_args(requests, NOW)


def parse_program(source: Source):
    program, errors = parse_source(source)
    assert not errors, errors
    return program


def merge(programs):
    out = programs[0]
    for p in programs[1:]:
        out = out.merge(p)
    return out


def check_and_compile(program, version: str):
    checked, diagnostics = check_program(program, {})
    assert not any(d.severity == "error" for d in diagnostics), diagnostics
    return checked, compile_policy(checked, version), version, diagnostics


def make_policy(sources, checked, compiled, version, diagnostics) -> Policy:
    return Policy(checked, compiled, version, sources, diagnostics)


def run(benchmark, size, fn, *args):
    """benchmark(fn, *args), with a few fixed rounds for big inputs instead of calibration."""
    if isinstance(size, int) and size >= BIG:
        return benchmark.pedantic(fn, args, rounds=3, iterations=1)
    return benchmark(fn, *args)


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return Corpus()


def pytest_collection_modifyitems(session, config, items):
    """Bench items in phase order (parse, compile, decide), in the slots they already hold."""
    slots = [i for i, item in enumerate(items) if Path(str(item.fspath)).parent == Path(__file__).parent]
    ordered = sorted((items[i] for i in slots), key=_phase)
    for slot, item in zip(slots, ordered):
        items[slot] = item


def _phase(item) -> int:
    name = Path(str(item.fspath)).name
    return PHASE_ORDER.index(name) if name in PHASE_ORDER else len(PHASE_ORDER)
