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
from ..lang.spec import TOOL_SEPARATOR
from .describe import cache_text, duration_text, outcome_text, tool_outcome_text
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
        return [rule for rule in self.all_rules() if rule.name not in hit]

    def all_rules(self) -> list:
        """The model rules, then the tool rules (their names never clash: the checker says so)."""
        return [*self.policy.checked.rules, *self.policy.checked.tool_rules]


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
    tool_rules = list(policy.tool_rules)
    keys = [k.name for k in policy.keys]
    seen: dict[tuple, object] = {}
    out = []
    for test in tests:
        where = (test.loc.file, test.name)
        if where in seen:
            checker.error("duplicate-test", f"test '{test.name}' is already written at {seen[where]}", test.loc)
        seen[where] = test.loc
        request = test.request
        if request.tool is not None:
            _check_tool_request(checker, test, policy)
            names = tool_rules
        else:
            if request.args is not None:
                loc = next(loc for item, loc in request.items if item == "args")
                checker.error("tool-request", "`args` are the arguments of a tool call", loc,
                              hint='name the tool too: `tool "SERVER__TOOL"`')
            problem = body_error(request.body)
            if problem is not None:
                checker.error("bad-request", f"the request is not valid: {problem[0]}", test.loc)
            names = rules
        if keys and request.key and request.key not in keys:
            checker.error("unknown-key", f"the policy declares no key '{request.key}'", test.loc,
                          hint=_did_you_mean(request.key, keys))
        expectations = []
        for e in test.expectations:
            _check_expectation_kind(checker, e, request.tool is not None)
            if e.kind == "route":
                e = replace(e, value=checker._target(e.value, []))
            for name, loc in e.names:
                if name not in names:
                    tool = names is tool_rules
                    other = rules if tool else tool_rules
                    hint = (f"'{name}' is a {'model' if tool else 'tool'} rule; "
                            f"a {'tool' if tool else 'model'} request never runs it"
                            if name in other else _did_you_mean(name, names))
                    checker.error("unknown-rule", f"the policy has no {'tool rule' if tool else 'model rule' if name in other else 'rule'} "
                                  f"'{name}'", loc, hint=hint)
            expectations.append(e)
        out.append(replace(test, expectations=tuple(expectations)))
    return out, checker.diagnostics


# Request items that describe a model request; a tool call has none of them.
_MODEL_ITEMS = ("model", "stream", "temperature", "max_tokens", "user", "path", "input_tokens", "body")
# Expectations about a model request's outcome; a tool call has none of these settings.
_MODEL_EXPECTATIONS = ("route", "error", "cache-ttl", "cache-off", "no-cache", "deadline", "cache-semantic")


def _check_tool_request(checker, test: PolicyTest, policy: Policy) -> None:
    request = test.request
    for item, loc in request.items:
        if item in _MODEL_ITEMS:
            checker.error("tool-request", f"'{item}' is not part of a tool call", loc,
                          hint="a tool request takes tool, args, key, ip, header, metadata and time")
    server, sep, tool = request.tool.partition(TOOL_SEPARATOR)
    if not sep or not server or not tool:
        checker.error("bad-tool", f"'{request.tool}' is not a tool name: tools are named SERVER{TOOL_SEPARATOR}TOOL",
                      request.tool_loc, hint='write it as "SERVER__TOOL", e.g. "demo__echo"')
    elif server not in policy.servers:
        hint = (_did_you_mean(server, list(policy.servers)) if policy.servers
                else "the policy declares no `mcp` or `api` server")
        checker.error("unknown-server", f"unknown server '{server}'", request.tool_loc, hint=hint)


def _check_expectation_kind(checker, e: Expectation, tool: bool) -> None:
    if tool and e.kind in _MODEL_EXPECTATIONS:
        checker.error("tool-expect", f"'expect {e.text}' is about a model request, not a tool call", e.loc,
                      hint="a tool test expects allow, hide, deny, matched, tag, no tag, limit, retry, "
                           "timeout or log")
    elif tool and e.kind == "deny" and e.value is not None:
        checker.error("tool-expect", "a tool deny has no status", e.loc,
                      hint="write `expect deny`: the agent gets the rule's message as a tool error")
    elif not tool and e.kind in ("allow", "hide"):
        checker.error("tool-expect", f"'expect {e.kind}' is about a tool call", e.loc,
                      hint='make the request a tool call with `tool "SERVER__TOOL"`')


def _did_you_mean(name: str, names: list[str]) -> str | None:
    close = difflib.get_close_matches(name, names, n=1)
    return f"did you mean '{close[0]}'?" if close else None


def run_test(test: PolicyTest, policy: Policy) -> TestResult:
    r = test.request
    if r.tool is not None:
        return _run_tool_test(test, policy)
    decision = policy.decide(r.body, r.headers, r.key, path=r.path, ip=r.ip, now=r.now)
    for e in test.expectations:
        got = mismatch(e, decision)
        if got is not None:
            return TestResult(test, Failure(e, got), tuple(decision.matched))
    return TestResult(test, None, tuple(decision.matched))


def _run_tool_test(test: PolicyTest, policy: Policy) -> TestResult:
    """A tool call as the tool gateway decides it: the tool rules, and whether the key sees the
    tool (a key's `tools [...]` hides the others exactly as `hide` does)."""
    r = test.request
    server, _, tool = r.tool.partition(TOOL_SEPARATOR)
    decision = policy.decide_tool(server, tool, r.args or {}, r.headers, r.key, ip=r.ip, now=r.now)
    key = next((k for k in policy.keys if k.name == r.key), None) if r.key else None
    unseen = key is not None and not key.sees_tool(r.tool)
    for e in test.expectations:
        got = tool_mismatch(e, decision, unseen, r.key)
        if got is not None:
            return TestResult(test, Failure(e, got), tuple(decision.matched))
    return TestResult(test, None, tuple(decision.matched))


def tool_mismatch(e: Expectation, d, unseen: bool, key: str) -> str | None:
    """As mismatch, for a tool decision; unseen: the key's `tools [...]` leave this tool out."""
    if e.kind in ("allow", "hide", "deny"):
        got = tool_outcome_text(d, unseen, key)
        hidden = unseen or d.hide
        if e.kind == "allow":
            return None if not hidden and d.deny is None else got
        if e.kind == "hide":
            return None if hidden else got
        return None if not hidden and d.deny is not None else got
    return mismatch(e, d)


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
    if kind == "cache-semantic":
        semantic = d.cache.semantic if d.cache is not None and d.cache.enabled else None
        return None if semantic is not None and semantic.threshold == value else cache_text(d)
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
    raise AssertionError(f"expectation {kind!r} has no check")   # the checker refused it


# ---- reports --------------------------------------------------------------------------------

def failure_line(result: TestResult) -> str:
    e, got = result.failure.expectation, result.failure.got
    return f"{e.loc}: FAIL {result.test.name}: expected {e.text}, got {got}"


def summary_line(run: TestRun) -> str:
    return f"{len(run.results) - len(run.failed)} passed, {len(run.failed)} failed"


def coverage_lines(run: TestRun) -> list[str]:
    missed = run.uncovered()
    tool_rules = run.policy.checked.tool_rules
    if not missed:
        return [f"coverage: every rule ({len(run.all_rules())}) is matched by a test"]
    return [f"coverage: {len(missed)} of {len(run.all_rules())} rules matched by no test:"] + [
        f"  {rule.loc}: {'tool rule' if rule in tool_rules else 'rule'} '{rule.name}'" for rule in missed]


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
