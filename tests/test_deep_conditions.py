"""Long and deep conditions: flat chains of any length load; deep nesting is a positioned error, never a traceback."""
from __future__ import annotations

import subprocess

import pytest

from edgerules import PolicyError, Source, build_policy
from procs import EDGERULES

BODY = {"model": "m9999", "messages": [{"role": "user", "content": "x"}]}


def _policy(condition: str) -> str:
    return f'provider demo {{ format echo }}\nrule r {{\n    when {condition}\n    route demo/echo\n}}\n'


@pytest.mark.parametrize("op", ["or", "and", "mixed"])
def test_a_10000_term_chain_loads_and_decides_alike_in_both_engines(op):
    words = ["or"] * 9999 if op == "or" else ["and"] * 9999 if op == "and" else \
        [("or" if i % 2 else "and") for i in range(9999)]
    terms = [f'model == "m{i}"' for i in range(10_000)]
    condition = terms[0] + "".join(f" {w} {t}" for w, t in zip(words, terms[1:]))
    policy = build_policy([Source("t.rules", _policy(condition))])
    compiled = policy.decide(BODY).to_dict()
    assert compiled == policy.decide(BODY, engine="interpreted").to_dict()
    assert compiled["matched"] == (["r"] if op == "or" else [])


def test_the_chain_through_the_console_script(tmp_path):
    condition = " or ".join(f'header("x-h") == "v{i}"' for i in range(10_000))
    path = tmp_path / "chain.rules"
    path.write_text(_policy(condition))
    result = subprocess.run([EDGERULES, "check", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 rule(s)" in result.stdout


@pytest.mark.parametrize("condition", [
    "not " * 500 + 'model == "x"',
    "".join(f'model == "a{i}" {"and" if i % 2 else "or"} (' for i in range(500)) + 'model == "x"' + ")" * 500,
])
def test_deep_nesting_is_a_positioned_diagnostic(condition):
    with pytest.raises(PolicyError) as info:
        build_policy([Source("deep.rules", _policy(condition))])
    (diag,) = info.value.diagnostics
    assert diag.code == "too-deep" and diag.file == "deep.rules" and diag.line == 3 and diag.column > 5
    assert "nests more than 200 levels deep" in str(info.value)
    assert "^" in str(info.value)                    # the caret under the place


def test_deeply_nested_targets_are_refused_too():
    route = "fallback [" * 300 + "demo/echo" + "]" * 300
    with pytest.raises(PolicyError) as info:
        build_policy([Source("t.rules", f"provider demo {{ format echo }}\nrule r {{ route {route} }}\n")])
    assert [d.code for d in info.value.diagnostics] == ["too-deep"]


def test_check_prints_the_error_not_a_traceback(tmp_path):
    path = tmp_path / "deep.rules"
    path.write_text(_policy("not " * 5000 + 'model == "x"'))
    result = subprocess.run([EDGERULES, "check", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "error[too-deep]" in result.stderr and "Traceback" not in result.stderr
    assert f"{path}:3:" in result.stderr


@pytest.mark.parametrize("nots", [190, 191])
def test_nesting_just_under_the_bound_still_compiles(nots):
    policy = build_policy([Source("t.rules", _policy("not " * nots + 'model == "x"'))])
    for engine in ("compiled", "interpreted"):
        matched = policy.decide({"model": "x", "messages": []}, engine=engine).to_dict()["matched"]
        assert matched == ([] if nots % 2 else ["r"])
