"""`edgerules check` and `edgerules eval`, run as real subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgerules.lang.policy import load_policy
from procs import EDGERULES

ROOT = Path(__file__).resolve().parents[1]

POLICY = """\
provider demo { format echo }
provider backup { format echo }
key team_a { sha256 "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" }

rule no_batch_streams {
    when header("x-client") == "batch" and stream
    deny 400 "batch clients must not stream"
}

rule free_tier {
    when header("X-Plan") == "free"
    limit tokens 100_000 per 1d by key else route demo/cheap
}

rule smart {
    when model == "smart"
    route split [80% demo/echo, 20% backup/echo]
}

rule sticky {
    when model == "sticky"
    route split [50% demo/a, 50% demo/b] by key
}
"""

BROKEN = 'provider demo { format echo }\nrule r {\n    when modle == "x"\n    route demo\n}\n'
CHAT = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}


def edgerules(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([EDGERULES, *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "policy.rules"
    path.write_text(POLICY)
    return path


def eval_json(*args: str, stdin: str | None = None) -> dict:
    result = edgerules("eval", *args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# ---- check ----------------------------------------------------------------------------------

def test_check_shipped_rules_exits_0():
    result = edgerules("check", "rules/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rules/: ok: ")
    assert "error[" not in result.stderr


def test_check_prints_warnings_and_still_exits_0(tmp_path):
    path = tmp_path / "warn.rules"
    path.write_text('provider p {\n    url "http://x"\n    api_key "sk-literal"\n}\n')
    result = edgerules("check", str(path))
    assert result.returncode == 0
    assert f"{path}:3:13: warning[literal-secret]:" in result.stderr
    assert result.stderr.rstrip().endswith("0 errors, 1 warning")
    assert f"{path}: ok: 1 file(s), 0 rule(s), 1 provider(s), 0 key(s); version " in result.stdout


def test_check_broken_file_exits_1_with_position_and_caret(tmp_path):
    path = tmp_path / "broken.rules"
    path.write_text(BROKEN)
    result = edgerules("check", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:3:10: error[unknown-field]: unknown field 'modle'",
        '  3 |     when modle == "x"',
        "    |          ^^^^^",
        "  hint: did you mean 'model'?",
        "1 error, 0 warnings",
    ]


def test_check_syntax_error_exits_1(tmp_path):
    path = tmp_path / "syntax.rules"
    path.write_text("rule r {\n    deny 403 @\n}\n")
    result = edgerules("check", str(path))
    assert result.returncode == 1
    assert f"{path}:2:14: error[syntax]: unexpected character '@'" in result.stderr
    assert "  2 |     deny 403 @\n    |              ^\n" in result.stderr


def test_check_missing_path_exits_1(tmp_path):
    result = edgerules("check", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "error[no-rules]: no such file or directory" in result.stderr


# ---- eval -----------------------------------------------------------------------------------

def test_eval_deny_from_stdin_with_headers(policy_file):
    body = json.dumps({**CHAT, "stream": True})
    d = eval_json(str(policy_file), "--header", "X-Client: batch", stdin=body)
    assert (d["action"], d["rule"], d["matched"]) == ("deny", "no_batch_streams", ["no_batch_streams"])
    assert d["deny"] == {"status": 400, "message": "batch clients must not stream"}


def test_eval_route_split_from_a_request_file(policy_file, tmp_path):
    request = tmp_path / "request.json"
    request.write_text(json.dumps(CHAT))
    d = eval_json(str(policy_file), "--request", str(request))
    assert (d["action"], d["rule"]) == ("route", "smart")
    assert d["route"] == {"split": [{"weight": 80.0, "target": "demo/echo"},
                                    {"weight": 20.0, "target": "backup/echo"}]}


def test_eval_sticky_split_with_key(policy_file):
    d = eval_json(str(policy_file), "--key", "team_a", stdin=json.dumps({"model": "sticky"}))
    assert d["route"]["by"] == ["team_a"]


def test_eval_limit_with_else_target(policy_file):
    d = eval_json(str(policy_file), "--header", "x-plan:free", "--key", "team_a", stdin=json.dumps(CHAT))
    assert d["matched"] == ["free_tier", "smart"]
    assert d["limits"] == [{"id": "free_tier#0", "rule": "free_tier", "kind": "tokens", "amount": 100_000,
                            "window": 86_400, "by": ["key"], "values": ["team_a"], "else": "demo/cheap"}]


def test_eval_no_route_is_404_model_not_found(policy_file):
    d = eval_json(str(policy_file), stdin=json.dumps({"model": "gpt-4o", "messages": []}))
    assert (d["action"], d["route"]) == ("none", None)
    assert d["error"]["status"] == 404 and d["error"]["code"] == "model_not_found"
    implicit = eval_json(str(policy_file), stdin=json.dumps({"model": "backup/echo-9"}))
    assert (implicit["route"], implicit["implicit"]) == ("backup/echo-9", True)


def test_eval_interpreted_engine_gives_the_same_json(policy_file):
    args = (str(policy_file), "--header", "x-plan:free", "--key", "team_a")
    body = json.dumps(CHAT)
    assert eval_json(*args, stdin=body) == eval_json(*args, "--engine", "interpreted", stdin=body)


def test_eval_shipped_rules():
    d = eval_json("rules/", stdin=json.dumps({"model": "demo/echo", "messages": []}))
    assert d["action"] == "route"
    d = eval_json("rules/", stdin=json.dumps({"model": "no-such-model"}))
    assert d["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("args, stdin, message", [
    (("--header", "no-colon"), json.dumps(CHAT), "--header takes K:V"),
    ((), "{not json", "the request is not valid JSON"),
    ((), "[1, 2]", "the request must be a JSON object"),
    ((), json.dumps({"model": 5}), "bad request: 'model' must be a string"),
    (("--key", "stranger"), json.dumps(CHAT), "the policy declares no key named 'stranger'"),
])
def test_eval_rejects_bad_input_with_exit_2(policy_file, args, stdin, message):
    result = edgerules("eval", str(policy_file), *args, stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr


def test_eval_on_a_broken_policy_exits_1(tmp_path):
    path = tmp_path / "broken.rules"
    path.write_text(BROKEN)
    result = edgerules("eval", str(path), stdin=json.dumps(CHAT))
    assert result.returncode == 1
    assert f"{path}:3:10: error[unknown-field]" in result.stderr


def test_show_code_prints_python_that_compiles(policy_file):
    result = edgerules("eval", str(policy_file), "--show-code")
    assert result.returncode == 0
    assert result.stdout == load_policy(policy_file).source()
    compile(result.stdout, "<show-code>", "exec")
    assert f"# {policy_file}:15: rule smart" in result.stdout
