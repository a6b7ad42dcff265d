"""The policy test runner: every `*.test.rules` under a path, decided against the policy there."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from xml.etree import ElementTree

from ..lang.check import _Checker
from ..lang.errors import Diagnostic, PolicyError
from ..lang.policy import Policy, load_policy, read_sources
from ..lang.schema import body_error
from ..lang.source import Source
from .describe import cache_text, duration_text, outcome_text
from .testfile import Expectation, PolicyTest, parse_tests

TEST_SUFFIX = ".test.rules"


@dataclass(frozen=True, slots=True)
class Failure:
    expectation: Expectation
    got: str


@dataclass(frozen=True, slots=True)
class TestResult:
    test: PolicyTest
    failure: Failure | None
    matched: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.failure is None


@dataclass
class TestRun:
    policy: Policy
    results: list[TestResult]
    sources: dict[str, Source]

    @property
    def failed(self) -> list[TestResult]:
        return [r for r in self.results if not r.passed]

    def uncovered(self) -> list:
        """The policy's rules that no test matched, in policy order."""
        hit = {name for r in self.results for name in r.matched}
        return [rule for rule in self.policy.checked.rules if rule.name not in hit]


def test_files(path: str | os.PathLike) -> list[Path]:
    root = Path(path)
    if root.is_file():
        return [root] if root.name.endswith(TEST_SUFFIX) else []
    return sorted(p for p in root.rglob("*" + TEST_SUFFIX) if p.is_file())


def policy_path(path: str | os.PathLike) -> Path:
    """The policy a test path is run against: the directory, or a test file's directory."""
    root = Path(path)
    return root.parent if root.is_file() and root.name.endswith(TEST_SUFFIX) else root


def run_tests(path: str | os.PathLike, env=None) -> TestRun:
    """Load the policy and every test under path; decide each test. Raises PolicyError on an
    error in the policy or in a test file."""
    policy = load_policy(policy_path(path), env)
    files = test_files(path)
    if not files:
        raise PolicyError([Diagnostic("no-tests", f"no *{TEST_SUFFIX} files in '{path}'", None)])
    sources = [s for f in files for s in read_sources(f)]
    tests, diagnostics = [], []
    for source in sources:
        parsed, problems = parse_tests(source)
        diagnostics.extend(problems)
        tests.extend(parsed)
    by_name = {s.name: s for s in sources}
    tests, problems = check_tests(tests, policy)
    diagnostics.extend(problems)
    if diagnostics:
        raise PolicyError(diagnostics, by_name)
    return TestRun(policy, [run_test(t, policy) for t in tests], by_name)


def check_tests(tests: list[PolicyTest], policy: Policy) -> tuple[list[PolicyTest], list[Diagnostic]]:
    """Names and targets the tests refer to, against the policy. Returns the tests with their
    expected routes resolved to the policy's targets, and every problem found."""
    checker = _Checker({})
    checker.providers = policy.providers
    rules = list(policy.rules)
    keys = [k.name for k in policy.keys]
    seen: dict[tuple, object] = {}
    out = []
    for test in tests:
        where = (test.loc.file, test.name)
        if where in seen:
            checker.error("duplicate-test", f"test '{test.name}' is already written at {seen[where]}", test.loc)
        seen[where] = test.loc
        if test.request.tool is not None:
            checker.error("tool-test", "tool requests need the tool gateway, which this version does not have",
                          test.loc, hint="remove `tool`, `args`, `expect allow` and `expect hide` for now")
        problem = body_error(test.request.body)
        if problem is not None:
            checker.error("bad-request", f"the request is not valid: {problem[0]}", test.loc)
        if keys and test.request.key and test.request.key not in keys:
            checker.error("unknown-key", f"the policy declares no key '{test.request.key}'", test.loc,
                          hint=_did_you_mean(test.request.key, keys))
        expectations = []
        for e in test.expectations:
            if e.kind in ("allow", "hide"):
                checker.error("tool-test", f"'expect {e.kind}' needs the tool gateway, which this version "
                              "does not have", e.loc)
            if e.kind == "route":
                e = replace(e, value=checker._target(e.value, []))
            for name, loc in e.names:
                if name not in rules:
                    checker.error("unknown-rule", f"the policy has no rule '{name}'", loc,
                                  hint=_did_you_mean(name, rules))
            expectations.append(e)
        out.append(replace(test, expectations=tuple(expectations)))
    return out, checker.diagnostics


def _did_you_mean(name: str, names: list[str]) -> str | None:
    close = difflib.get_close_matches(name, names, n=1)
    return f"did you mean '{close[0]}'?" if close else None


def run_test(test: PolicyTest, policy: Policy) -> TestResult:
    r = test.request
    decision = policy.decide(r.body, r.headers, r.key, path=r.path, ip=r.ip, now=r.now)
    for e in test.expectations:
        got = mismatch(e, decision)
        if got is not None:
            return TestResult(test, Failure(e, got), tuple(decision.matched))
    return TestResult(test, None, tuple(decision.matched))


def mismatch(e: Expectation, d) -> str | None:
    """What the decision shows instead of the expectation, or None when it holds."""
    kind, value = e.kind, e.value
    if kind == "deny":
        ok = d.deny is not None and (value is None or d.deny[0] == value)
        return None if ok else outcome_text(d)
    if kind == "route":
        ok = d.route is not None and d.route.to_dict() == value.to_dict()
        return None if ok else outcome_text(d)
    if kind == "error":
        return None if d.error is not None and d.error[0] == value else outcome_text(d)
    if kind == "matched":
        return None if list(d.matched) == value else f"matched [{', '.join(d.matched)}]"
    if kind in ("tag", "no-tag"):
        if (value in d.tags) == (kind == "tag"):
            return None
        return "tags [" + ", ".join(f'"{t}"' for t in d.tags) + "]"
    if kind == "limit":
        rules = list(dict.fromkeys(spec.rule for spec, _ in d.limits))
        return None if value in rules else f"limits from [{', '.join(rules)}]"
    if kind == "cache-ttl":
        ok = d.cache is not None and d.cache.enabled and d.cache.ttl == value
        return None if ok else cache_text(d)
    if kind == "cache-off":
        return None if d.cache is not None and not d.cache.enabled else cache_text(d)
    if kind == "no-cache":
        return None if d.cache is None or not d.cache.enabled else cache_text(d)
    if kind == "retry":
        attempts = d.retry.attempts if d.retry is not None else None
        return None if attempts == value else (f"retry {attempts}" if attempts else "no retry")
    if kind == "timeout":
        if d.timeout == value:
            return None
        return f"timeout {duration_text(d.timeout)}" if d.timeout is not None else "no timeout"
    if kind == "deadline":
        return None if d.deadline == value else f"deadline {duration_text(d.deadline)}"
    if kind == "log":
        return None if d.log == value else f"log {d.log}"
    return f"'{kind}' cannot be decided without the tool gateway"


# ---- reports --------------------------------------------------------------------------------

def failure_line(result: TestResult) -> str:
    e, got = result.failure.expectation, result.failure.got
    return f"{e.loc}: FAIL {result.test.name}: expected {e.text}, got {got}"


def summary_line(run: TestRun) -> str:
    return f"{len(run.results) - len(run.failed)} passed, {len(run.failed)} failed"


def coverage_lines(run: TestRun) -> list[str]:
    missed = run.uncovered()
    if not missed:
        return [f"coverage: every rule ({len(run.policy.rules)}) is matched by a test"]
    return [f"coverage: {len(missed)} of {len(run.policy.rules)} rules matched by no test:"] + [
        f"  {rule.loc}: rule '{rule.name}'" for rule in missed]


def junit_xml(run: TestRun) -> str:
    suites = ElementTree.Element("testsuites", tests=str(len(run.results)), failures=str(len(run.failed)))
    by_file: dict[str, list[TestResult]] = {}
    for r in run.results:
        by_file.setdefault(r.test.loc.file, []).append(r)
    for file, results in by_file.items():
        failures = sum(not r.passed for r in results)
        suite = ElementTree.SubElement(suites, "testsuite", name=file, tests=str(len(results)),
                                       failures=str(failures), errors="0", skipped="0")
        for r in results:
            case = ElementTree.SubElement(suite, "testcase", name=r.test.name, classname=file,
                                          file=file, line=str(r.test.loc.line))
            if r.failure is not None:
                node = ElementTree.SubElement(case, "failure", message=failure_line(r), type="expectation")
                node.text = failure_line(r)
    ElementTree.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(suites, encoding="unicode") + "\n"
