"""`edgerules test`: *.test.rules files that pass, fail and have errors, through the console script
and through the API; the policy loader leaves test files out."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest

from edgerules import PolicyError, load_policy
from edgerules.authoring.testfile import parse_tests
from edgerules.authoring.tests import run_tests
from edgerules.lang.source import Source
from procs import EDGERULES

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
POLICY_FILES = [f for f in sorted(RULES.glob("*.rules")) if not f.name.endswith(".test.rules")]
# Model and tool rules of the shipped policy (the #16 examples add files of their own).
SHIPPED_RULES = sum(len(re.findall(r"^rule ", f.read_text(), re.M)) for f in POLICY_FILES)


def edgerules(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EDGERULES, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    for file in RULES.glob("*.rules"):
        if not file.name.endswith(".test.rules"):
            shutil.copy(file, tmp_path / file.name)
    return tmp_path


def test_the_shipped_tests_pass_and_cover_every_rule():
    out = edgerules("test", str(RULES), "--coverage")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1].endswith(" passed, 0 failed")
    assert int(lines[-1].split()[0]) >= 15
    assert f"coverage: every rule ({SHIPPED_RULES}) is matched by a test" in lines


def test_the_loader_leaves_test_files_out():
    policy = load_policy(RULES)
    assert not any(f.endswith(".test.rules") for f in policy.files)
    assert len(policy.files) == len(POLICY_FILES)


FAILING = """\
test smart_goes_to_backup {
    request { model "smart" }
    expect retry 3
    expect route backup/echo
}

test guards_pass {
    request { model "smart" input_tokens 40_000 }
    expect deny 413
}

test wrong_status {
    request { model "smart" input_tokens 40_000 }
    expect deny 400
}
"""


def test_a_failing_test_prints_its_expect_expected_and_got_and_exits_1(policy_dir: Path):
    (policy_dir / "x.test.rules").write_text(FAILING)
    out = edgerules("test", str(policy_dir))
    assert out.returncode == 1
    file = policy_dir / "x.test.rules"
    assert out.stdout.splitlines() == [
        f"{file}:4:5: FAIL smart_goes_to_backup: expected route backup/echo, "
        "got route split [80% demo/echo, 20% backup/echo]",
        f"{file}:14:5: FAIL wrong_status: expected deny 400, got deny 413",
        "1 passed, 2 failed",
    ]


def rule_loc(file: Path, name: str) -> str:
    """FILE:LINE:COL of the rule's name, as coverage prints it."""
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if line.startswith(f"rule {name} "):
            return f"{file}:{number}:6"
    raise AssertionError(f"no rule {name} in {file}")


def test_junit_and_coverage(policy_dir: Path, tmp_path_factory):
    (policy_dir / "x.test.rules").write_text(FAILING)
    junit = tmp_path_factory.mktemp("out") / "junit.xml"
    out = edgerules("test", str(policy_dir), "--coverage", "--junit", str(junit))
    assert out.returncode == 1
    assert f"coverage: {SHIPPED_RULES - 2} of {SHIPPED_RULES} rules matched by no test:" in out.stdout
    assert f"  {policy_dir / '20-tiers.rules'}:4:6: rule 'free_tier'" in out.stdout
    assert f"  {rule_loc(policy_dir / '40-tools.rules', 'demo_pace')}: tool rule 'demo_pace'" in out.stdout
    root = ElementTree.parse(junit).getroot()
    assert (root.tag, root.get("tests"), root.get("failures")) == ("testsuites", "3", "2")
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == ["smart_goes_to_backup", "guards_pass", "wrong_status"]
    assert [c.find("failure") is not None for c in cases] == [True, False, True]


def test_errors_in_a_test_file_are_diagnostics_with_did_you_mean(policy_dir: Path):
    (policy_dir / "x.test.rules").write_text(
        'test t {\n    request { model "smart" }\n    expect matched [smart_alis]\n'
        '    expect route fallback [dmeo/echo]\n}\n')
    out = edgerules("test", str(policy_dir))
    assert out.returncode == 1
    file = policy_dir / "x.test.rules"
    assert out.stderr.splitlines() == [
        f"{file}:3:21: error[unknown-rule]: the policy has no rule 'smart_alis'",
        "  3 |     expect matched [smart_alis]",
        "    |                     ^^^^^^^^^^",
        "  hint: did you mean 'smart_alias'?",
        f"{file}:4:28: error[unknown-provider]: unknown provider 'dmeo'",
        "  4 |     expect route fallback [dmeo/echo]",
        "    |                            ^^^^^^^^^",
        "  hint: did you mean 'demo'?",
        "2 errors, 0 warnings",
    ]
    assert out.stdout == ""


def test_a_syntax_error_in_a_test_file(policy_dir: Path):
    (policy_dir / "x.test.rules").write_text('test t {\n    request { modle "smart" }\n}\n')
    out = edgerules("test", str(policy_dir))
    assert out.returncode == 1
    first = out.stderr.splitlines()[0]
    assert first.startswith(f"{policy_dir / 'x.test.rules'}:2:15: error[syntax]: unexpected ")
    assert "did you mean 'model'?" in out.stderr


def test_no_test_files_is_an_error(policy_dir: Path):
    out = edgerules("test", str(policy_dir))
    assert out.returncode == 1
    assert "error[no-tests]" in out.stderr


def parse(text: str):
    tests, problems = parse_tests(Source("t.test.rules", text))
    assert not problems
    return tests


def test_request_fields_build_the_request():
    [test] = parse("""
test all_fields {
    request {
        body        { "messages": [{"role": "user", "content": "hi"}], "temperature": 1, "x": [null, 1.5] }
        model       "m"
        stream      true
        temperature 0
        max_tokens  100
        user        "u"
        key         search_team
        ip          "10.0.0.1"
        path        "/v1/embeddings"
        header      "X-Plan" "free"
        metadata    team "a"
        metadata    "region" "eu"
        time        "2026-11-30T09:00:00+01:00"
    }
}
""")
    r = test.request
    assert r.body == {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "x": [None, 1.5],
                      "model": "m", "stream": True, "max_tokens": 100, "user": "u"}
    assert r.headers == {"x-plan": "free", "x-edgerules-metadata": '{"team": "a", "region": "eu"}'}
    assert (r.key, r.ip, r.path, r.now) == ("search_team", "10.0.0.1", "/v1/embeddings", 1796025600.0)


def test_every_expectation_through_the_api(tmp_path: Path):
    (tmp_path / "p.rules").write_text("""
provider demo { format echo }
rule everything {
    when model == "a"
    limit requests 10 per 1m
    cache off
    retry 2
    timeout 5s
    deadline 30s
    log none
    tag "t"
    route fallback [demo/x, demo]
}
rule refuse { when model == "b" deny 451 }
""")
    (tmp_path / "p.test.rules").write_text("""
test pass {
    request { model "a" }
    expect route fallback [demo/x, demo]
    expect matched [everything]
    expect limit everything
    expect cache off
    expect no cache
    expect retry 2
    expect timeout 5s
    expect deadline 30s
    expect log none
    expect tag "t"
    expect no tag "u"
}
test deny { request { model "b" } expect deny expect deny 451 expect no cache }
test none { request { model "c" } expect error 404 expect matched [] }
test f1 { request { model "a" } expect cache ttl 1m }
test f2 { request { model "a" } expect timeout 6s }
test f3 { request { model "b" } expect retry 1 }
test f4 { request { model "a" } expect no tag "t" }
test f5 { request { model "b" } expect limit everything }
test f6 { request { model "b" } expect deadline 1m }
test f7 { request { model "b" } expect log full }
test f8 { request { model "a" } expect error 404 }
""")
    run = run_tests(tmp_path)
    got = {r.test.name: (r.failure.got if r.failure else None) for r in run.results}
    assert got == {
        "pass": None, "deny": None, "none": None,
        "f1": "cache off", "f2": "timeout 5s", "f3": "no retry", "f4": 'tags ["t"]',
        "f5": "limits from []", "f6": "deadline 5m", "f7": "log meta",
        "f8": "route fallback [demo/x, demo]",
    }


TOOL_TESTS = """\
test echo_passes {
    request { tool "demo__echo" args { "text": "hi" } }
    expect allow
    expect matched [demo_pace]
}

test wrongly_expects_a_hide {
    request { tool "demo__echo" args { "text": "a password" } }
    expect hide
}

test wrongly_expects_an_allow {
    request { tool "demo__admin_stats" }
    expect deny
}
"""


def test_tool_tests_through_the_console_script(policy_dir: Path):
    (policy_dir / "x.test.rules").write_text(TOOL_TESTS)
    out = edgerules("test", str(policy_dir), "--coverage")
    assert out.returncode == 1, out.stderr
    file = policy_dir / "x.test.rules"
    lines = out.stdout.splitlines()
    assert lines[0] == (f"{file}:9:5: FAIL wrongly_expects_a_hide: expected hide, "
                        'got deny "do not send passwords through tools" (rule no_passwords_through_tools)')
    assert lines[1] == f"{file}:14:5: FAIL wrongly_expects_an_allow: expected deny, got hide (rule admin_tools_for_ops)"
    assert lines[-1] == "1 passed, 2 failed"
    # The tool rules count in the coverage: three of them matched, big_sums_need_a_human did not.
    assert f"coverage: {SHIPPED_RULES - 3} of {SHIPPED_RULES} rules matched by no test:" in lines
    big_sums = rule_loc(policy_dir / "40-tools.rules", "big_sums_need_a_human")
    assert f"  {big_sums}: tool rule 'big_sums_need_a_human'" in lines
    assert not any("'demo_pace'" in line for line in lines)


def test_tool_request_errors_are_positioned_diagnostics(policy_dir: Path):
    (policy_dir / "x.test.rules").write_text(
        'test a {\n    request { tool "dmeo__echo" model "x" }\n    expect route demo/echo\n}\n'
        'test b {\n    request { tool "echo" }\n    expect deny 403\n    expect matched [smart_alias]\n}\n'
        'test c {\n    request { model "smart" args { "a": 1 } }\n    expect hide\n}\n')
    out = edgerules("test", str(policy_dir))
    assert out.returncode == 1
    file = policy_dir / "x.test.rules"
    errors = [line for line in out.stderr.splitlines() if "error[" in line or "hint:" in line]
    assert errors == [
        f"{file}:2:20: error[unknown-server]: unknown server 'dmeo'",
        "  hint: did you mean 'demo'?",
        f"{file}:2:33: error[tool-request]: 'model' is not part of a tool call",
        "  hint: a tool request takes tool, args, key, ip, header, metadata and time",
        f"{file}:3:5: error[tool-expect]: 'expect route demo/echo' is about a model request, not a tool call",
        "  hint: a tool test expects allow, hide, deny, matched, tag, no tag, limit, retry, timeout or log",
        f"{file}:6:20: error[bad-tool]: 'echo' is not a tool name: tools are named SERVER__TOOL",
        '  hint: write it as "SERVER__TOOL", e.g. "demo__echo"',
        f"{file}:7:5: error[tool-expect]: a tool deny has no status",
        "  hint: write `expect deny`: the agent gets the rule's message as a tool error",
        f"{file}:8:21: error[unknown-rule]: the policy has no tool rule 'smart_alias'",
        "  hint: 'smart_alias' is a model rule; a tool request never runs it",
        f"{file}:11:29: error[tool-request]: `args` are the arguments of a tool call",
        '  hint: name the tool too: `tool "SERVER__TOOL"`',
        f"{file}:12:5: error[tool-expect]: 'expect hide' is about a tool call",
        '  hint: make the request a tool call with `tool "SERVER__TOOL"`',
    ]
    assert out.stdout == ""


def test_every_tool_expectation_through_the_api(tmp_path: Path):
    (tmp_path / "p.rules").write_text("""
mcp demo { builtin echo }
mcp other { builtin echo }
key bot { secret "k1" tools ["demo__*"] }
key ops { secret "k2" }
rule secret_args for tools { when arg("text") == "secret" deny "no secrets" }
rule pace for tools {
    when server == "demo"
    limit calls 5 per 1m
    retry 2
    timeout 3s
    log full
    tag "paced"
}
rule hide_admin for tools { when tool starts_with "admin_" and key != "ops" hide }
rule model_rule { route demo }
""".replace("rule model_rule { route demo }", "provider demo { format echo }\nrule model_rule { route demo }"))
    (tmp_path / "p.test.rules").write_text("""
test pass {
    request { tool "demo__echo" key bot time "2026-11-30T09:00:00Z" ip "10.0.0.2" }
    expect allow
    expect matched [pace]
    expect limit pace
    expect retry 2
    expect timeout 3s
    expect log full
    expect tag "paced"
    expect no tag "x"
}
test denied { request { tool "demo__echo" args { "text": "secret" } } expect deny expect matched [secret_args] }
test hidden { request { tool "demo__admin_stats" key bot } expect hide expect matched [pace, hide_admin] }
test ops_sees { request { tool "demo__admin_stats" key ops } expect allow }
test unseen { request { tool "other__echo" key bot } expect hide expect matched [] }
test seen { request { tool "other__echo" key ops } expect allow }
test f1 { request { tool "other__echo" key bot } expect allow }
test f2 { request { tool "demo__admin_stats" key bot } expect deny }
test f3 { request { tool "demo__echo" args { "text": "secret" } } expect allow }
test f4 { request { tool "demo__echo" } expect hide }
test f5 { request { tool "other__echo" } expect limit pace }
test f6 { request { tool "other__echo" } expect timeout 1s }
test f7 { request { tool "demo__echo" header "x-a" "b" metadata team "t" } expect matched [] }
""")
    run = run_tests(tmp_path)
    got = {r.test.name: (r.failure.got if r.failure else None) for r in run.results}
    assert got == {
        "pass": None, "denied": None, "hidden": None, "ops_sees": None, "unseen": None, "seen": None,
        "f1": "hide (key 'bot' does not see the tool)",
        "f2": "hide (rule hide_admin)",
        "f3": 'deny "no secrets" (rule secret_args)',
        "f4": "allow",
        "f5": "limits from []",
        "f6": "no timeout",
        "f7": "matched [pace]",
    }
    assert run.uncovered() == [r for r in run.policy.checked.rules if r.name == "model_rule"]


def test_tool_request_fields_build_the_request():
    [test] = parse('test t {\n    request { tool "demo__echo" args { "text": "hi", "n": [1, null] } key k }\n}\n')
    r = test.request
    assert (r.tool, r.args, r.key, r.body) == ("demo__echo", {"text": "hi", "n": [1, None]}, "k", {})
    assert (r.tool_loc.line, r.tool_loc.column) == (2, 20)


def test_a_bad_time_is_a_diagnostic(tmp_path: Path):
    (tmp_path / "p.rules").write_text("provider demo { format echo }\n")
    (tmp_path / "p.test.rules").write_text('test t { request { time "yesterday" } }\n')
    with pytest.raises(PolicyError) as info:
        run_tests(tmp_path)
    assert [(d.code, d.line, d.column) for d in info.value.diagnostics] == [("bad-time", 1, 20)]
