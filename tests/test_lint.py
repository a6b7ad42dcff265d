"""The deeper checks of engine/lang/check/lint.py: each warning with its code and position, none
over the shipped rules, and never a false positive over random policies (checked by deciding)."""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from edgerules import PolicyError, load_policy
from edgerules.drills.synth import policy_requests
from edgerules.lang.policy import build_policy
from edgerules.lang.source import Source
from policy_strategies import ENV, policies, random_request
from procs import EDGERULES

ROOT = Path(__file__).resolve().parents[1]
DEMO = "provider demo { format echo }\n"
LINT = {"shadowed-rule", "never-true", "unused-provider", "unused-key", "same-else-route"}


def lint(text: str) -> list[tuple]:
    policy = build_policy([Source("t.rules", text)], {})
    return [(d.code, d.line, d.column, d.message, d.hint) for d in policy.warnings + policy.notes
            if d.code in LINT]


def test_a_rule_covered_by_an_earlier_route_is_shadowed():
    text = DEMO + ('rule wide { when model in ["x", "y"] route demo }\n'
                   'rule narrow { when model == "x" and stream route demo }\n')
    assert lint(text) == [("shadowed-rule", 3, 6,
                           "rule 'narrow' never runs: an earlier rule takes every request it matches",
                           "rule 'wide' at t.rules:2:6 matches all of them and ends the walk")]


def test_shadowing_by_the_same_condition_ranges_and_string_tests():
    text = DEMO + ('rule a { when header("x-plan") == "free" deny 403 }\n'
                   'rule b { when header("X-Plan") == "free" route demo }\n'
                   'rule c { when temperature > 1 deny 400 }\n'
                   'rule d { when temperature >= 2 and not stream route demo }\n'
                   'rule e { when model starts_with "fast" route demo }\n'
                   'rule f { when model in ["fast-1", "fast-2"] route demo }\n'
                   'rule g { when model == "q" or model == "r" route demo }\n'
                   'rule h { when model == "r" route demo }\n')
    assert [(code, line) for code, line, *_ in lint(text)] == [
        ("shadowed-rule", 3), ("shadowed-rule", 5), ("shadowed-rule", 7), ("shadowed-rule", 9)]


def test_what_is_not_proved_is_not_reported():
    text = DEMO + ('rule a { when model == "x" tag "t" }\n'             # does not end the walk
                   'rule b { when model == "x" route demo }\n'
                   'rule c { when temperature > 1 route demo }\n'
                   'rule d { when temperature >= 1 route demo }\n'      # 1 is not > 1
                   'rule e { when model matches "^a" route demo }\n'
                   'rule f { when model starts_with "a" route demo }\n'  # opaque to each other
                   'rule g { when model != "x" route demo }\n'
                   'rule h { when model != "y" route demo }\n')
    assert lint(text) == []


def test_conditions_that_are_never_true():
    text = DEMO + ('rule a { when model == "a" and model == "b" route demo }\n'
                   'rule b { when max_tokens > 10 and max_tokens < 5 route demo }\n'
                   'rule c { when hour >= 24 tag "x" }\n'
                   'rule d { when weekday in [7, 8] or false tag "y" }\n'
                   'rule e { when model in ["a", "b"] and model starts_with "c" tag "z" }\n')
    found = lint(text)
    assert [(code, line, column) for code, line, column, *_ in found] == [
        ("never-true", 2, 15), ("never-true", 3, 15), ("never-true", 4, 20), ("never-true", 5, 15),
        ("never-true", 6, 15)]
    assert found[0][3] == "the condition of rule 'a' is never true: the rule never runs"
    assert found[0][4] == ("'model == \"a\"' at t.rules:2:21 and 'model == \"b\"' at t.rules:2:38 "
                           "exclude each other")
    assert found[2][4] == "'hour >= 24' is never true"


def test_a_key_no_declared_key_has_is_never_true_and_a_key_no_rule_names_is_unused():
    text = ('provider demo { format echo }\nkey a { secret env("A") }\nkey b { secret env("B") }\n'
            'rule r { when key == "a" route demo }\nrule s { when key == "c" route demo }\n')
    policy = build_policy([Source("t.rules", text)], {"A": "1", "B": "2"})
    assert sorted((d.code, d.line, d.column) for d in policy.warnings) == [
        ("never-true", 5, 19), ("unused-key", 3, 5)]
    # Keys that no rule tells apart only authenticate: nothing to report.
    text = 'provider demo { format echo }\nkey a { secret env("A") }\nrule r { route demo }\n'
    assert build_policy([Source("t.rules", text)], {"A": "1"}).warnings == ()


def test_unused_provider_only_when_a_rule_ends_every_walk():
    text = DEMO + "provider spare { format echo }\nrule all { route demo }\n"
    assert lint(text) == [("unused-provider", 2, 10, "provider 'spare' is never used: no rule routes to it",
                           "rule 'all' at t.rules:3:6 ends every walk, so no request for 'spare/MODEL' "
                           "reaches it either")]
    assert build_policy([Source("t.rules", text)], {}).notes[0].severity == "note"
    assert lint(DEMO + "provider spare { format echo }\nrule r { when stream route demo }\n") == []


def test_an_else_route_to_the_rules_own_route():
    text = DEMO + ('rule r {\n    limit requests 5 per 1m else route demo/a\n    route demo/a\n}\n'
                   'rule s {\n    limit requests 5 per 1m else route demo/b\n    route demo/a\n}\n')
    assert lint(text) == [("same-else-route", 3, 5, "'else route' sends the request where the rule's own "
                           "route does: over the limit nothing changes",
                           "the route of rule 'r' is at t.rules:4:5; drop 'else route' to answer 429, "
                           "or name another target")]


def test_no_lint_over_the_shipped_rules():
    policy = load_policy(ROOT / "rules")
    assert [d.code for d in policy.warnings] == []
    assert [d.code for d in policy.notes] == ["cache-scope", "cache-scope"]   # 20-tiers, 50-semantic-cache


def edgerules(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EDGERULES, *args], capture_output=True, text=True, timeout=120)


def test_eval_time_sets_hour_and_weekday(tmp_path: Path):
    path = tmp_path / "p.rules"
    path.write_text(DEMO + 'rule night { when hour >= 22 and weekday == 0 tag "night" }\n')
    request = tmp_path / "r.json"
    request.write_text('{"model": "demo/echo"}')
    out = edgerules("eval", str(path), "--request", str(request), "--time", "2026-11-30T22:30:00Z")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["tags"] == ["night"]
    out = edgerules("eval", str(path), "--request", str(request), "--time", "2026-11-30T21:30:00+00:00")
    assert json.loads(out.stdout)["tags"] == []
    out = edgerules("eval", str(path), "--request", str(request), "--time", "tonight")
    assert out.returncode == 2
    assert "--time takes an ISO 8601 time" in out.stderr


def test_check_formats_and_strict(tmp_path: Path):
    path = tmp_path / "p.rules"
    path.write_text(DEMO + 'rule a { when model == "a" and model == "b" route demo }\n'
                           'rule c { cache ttl 1m }\n')
    out = edgerules("check", str(path), "--format", "json")
    assert out.returncode == 0
    report = json.loads(out.stdout)
    assert report["ok"] is True
    assert [(d["code"], d["severity"], d["line"], d["column"]) for d in report["diagnostics"]] == [
        ("never-true", "warning", 2, 15), ("cache-scope", "note", 3, 10)]
    out = edgerules("check", str(path), "--format", "github")
    assert out.returncode == 0
    assert out.stdout.splitlines()[0].startswith(
        f"::warning file={path},line=2,col=15,title=never-true::the condition of rule 'a' is never true: "
        "the rule never runs ('model == \"a\"' at ")
    assert out.stdout.splitlines()[1].startswith(f"::notice file={path},line=3,col=10,title=cache-scope::")
    out = edgerules("check", str(path), "--strict")
    assert out.returncode == 1
    assert f"{path}:2:15: error[never-true]:" in out.stderr
    assert f"{path}:3:10: note[cache-scope]:" in out.stderr
    assert out.stderr.splitlines()[-1] == "1 error, 0 warnings, 1 note"
    out = edgerules("check", str(ROOT / "rules"), "--strict")
    assert out.returncode == 0, out.stderr


SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(text=policies(), seed=st.integers(0, 2**32))
def test_no_false_positive_over_random_policies(text, seed):
    """A rule reported shadowed or never true is matched by no request: random ones, and ones
    aimed at the literals of each rule's condition."""
    try:
        policy = build_policy([Source("random.rules", text)], ENV)
    except PolicyError:    # test_differential insists that they load; here only loaded ones count
        reject()
    dead = {d.message.split("'")[1] for d in policy.warnings if d.code in ("shadowed-rule", "never-true")}
    if not dead:
        return
    rng = random.Random(seed)
    requests = [random_request(rng) for _ in range(150)]
    requests += [(body, headers, key, "/v1/chat/completions", "POST", "127.0.0.1", now)
                 for body, headers, key in policy_requests(policy, 150, seed)
                 for now in (0.0,)]
    for args in requests:
        try:
            matched = set(policy.interpret(*args).matched)
        except Exception:    # an engine bug on this request is test_differential's to find
            continue
        assert not matched & dead, f"{matched & dead} matched\n{args!r}\n{text}"


def test_a_key_named_only_by_a_tool_rule_is_used(tmp_path):
    path = tmp_path / "p.rules"
    path.write_text('provider demo { format echo }\nmcp t { builtin echo }\n'
                    'key a { secret env("K_A") }\nkey ops { secret env("K_OPS") }\n'
                    'rule only_a { when key == "a" tag "a" }\n'
                    'rule ops_tools for tools {\n    when key != "ops" and tool starts_with "admin_"\n    hide\n}\n'
                    'rule r { route demo/echo }\n')
    import os
    import subprocess

    from procs import EDGERULES
    result = subprocess.run([EDGERULES, "check", str(path)], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "K_A": "secret-a-123", "K_OPS": "secret-ops-456"})
    assert result.returncode == 0, result.stderr
    assert "unused-key" not in result.stderr
