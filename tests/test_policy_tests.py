"""`edgerules test`: *.test.rules files that pass, fail and have errors, through the console script
and through the API; the policy loader leaves test files out."""
from __future__ import annotations

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
    assert "coverage: every rule (12) is matched by a test" in lines


def test_the_loader_leaves_test_files_out():
    policy = load_policy(RULES)
    assert not any(f.endswith(".test.rules") for f in policy.files)
    assert len(policy.files) == 5     # 00-providers ... 40-tools


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


def test_junit_and_coverage(policy_dir: Path, tmp_path_factory):
    (policy_dir / "x.test.rules").write_text(FAILING)
    junit = tmp_path_factory.mktemp("out") / "junit.xml"
    out = edgerules("test", str(policy_dir), "--coverage", "--junit", str(junit))
    assert out.returncode == 1
    assert "coverage: 10 of 12 rules matched by no test:" in out.stdout
    assert f"  {policy_dir / '20-tiers.rules'}:4:6: rule 'free_tier'" in out.stdout
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


def test_tool_tests_are_refused_until_the_tool_gateway_exists(tmp_path: Path):
    (tmp_path / "p.rules").write_text("provider demo { format echo }\n")
    (tmp_path / "p.test.rules").write_text(
        'test t {\n    request { tool "fs__read" args { "path": "/" } }\n    expect allow\n}\n')
    with pytest.raises(PolicyError) as info:
        run_tests(tmp_path)
    assert [(d.code, d.line, d.column) for d in info.value.diagnostics] == [
        ("tool-test", 1, 6), ("tool-test", 3, 5)]


def test_a_bad_time_is_a_diagnostic(tmp_path: Path):
    (tmp_path / "p.rules").write_text("provider demo { format echo }\n")
    (tmp_path / "p.test.rules").write_text('test t { request { time "yesterday" } }\n')
    with pytest.raises(PolicyError) as info:
        run_tests(tmp_path)
    assert [(d.code, d.line, d.column) for d in info.value.diagnostics] == [("bad-time", 1, 20)]
