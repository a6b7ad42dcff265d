"""codegen.py and compiler.py: golden generated code and diagnostics, the dispatch index, hygiene.

Regenerate the golden files after an intended change with
    EDGERULES_UPDATE_GOLDEN=1 python -m pytest tests/test_codegen.py
and review the diff.
"""
from __future__ import annotations

import ast as pyast
import builtins
import linecache
import os
import subprocess
from pathlib import Path

import pytest

from edgerules.lang.codegen import DISPATCH_MIN, RUNTIME_HELPERS, generate
from edgerules.lang.errors import PolicyError, render_all
from edgerules.lang.policy import build_policy
from edgerules.lang.schema import DECIDE_ARGS
from edgerules.lang.source import Source
from policy_strategies import quote
from procs import EDGERULES

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("EDGERULES_UPDATE_GOLDEN") == "1"


def build(text: str, name: str = "t.rules"):
    return build_policy([Source(name, text)], {})


def check_golden(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: run with EDGERULES_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{path.name} differs: run with EDGERULES_UPDATE_GOLDEN=1 and review the diff"


def golden_sources(kind: str) -> list[Path]:
    return sorted((GOLDEN / kind).glob("*.rules"))


@pytest.mark.parametrize("rules", golden_sources("codegen"), ids=lambda p: p.stem)
def test_golden_generated_code(rules: Path):
    policy = build(rules.read_text(encoding="utf-8"), rules.name)
    check_golden(rules.with_suffix(".py"), policy.source())


@pytest.mark.parametrize("rules", golden_sources("diagnostics"), ids=lambda p: p.stem)
def test_golden_diagnostics(rules: Path):
    source = Source(rules.name, rules.read_text(encoding="utf-8"))
    try:
        policy = build_policy([source], {})
    except PolicyError as exc:
        actual = str(exc) + "\n"
    else:
        actual = render_all(policy.warnings, policy.sources) + "\n"
    check_golden(rules.with_suffix(".txt"), actual)


def test_golden_files_exist_for_every_kind():
    assert len(golden_sources("codegen")) >= 2 and len(golden_sources("diagnostics")) >= 3


# ---- the dispatch index ---------------------------------------------------------------------

def model_rules(n: int, field: str = "model") -> str:
    return "\n".join(f'rule {field.split("(")[0]}{i} {{ when {field} == "v{i}" tag "t{i}" }}' for i in range(n))


@pytest.mark.parametrize("n", range(1, DISPATCH_MIN + 3))
def test_dispatch_starts_at_the_threshold(n):
    policy = build("provider demo { format echo }\n" + model_rules(n))
    assert ("_D1 = {" in policy.source()) == (n >= DISPATCH_MIN)
    for i in range(n):
        for engine in ("compiled", "interpreted"):
            d = policy.decide({"model": f"v{i}"}, engine=engine)
            assert d.tags == (f"t{i}",) and d.matched == [f"model{i}"]
    assert policy.decide({"model": "none"}).matched == []


def test_dispatch_runs_break_on_another_field_and_restart():
    n = DISPATCH_MIN
    text = ("provider demo { format echo }\n" + model_rules(n) + "\nrule other { when stream tag \"s\" }\n"
            + model_rules(n).replace("rule model", "rule again") + "\n"
            + model_rules(n, 'header("x-plan")'))
    source = build(text).source()
    assert "_D1 = {" in source and "_D2 = {" in source and "_D3 = {" in source and "_D4" not in source
    assert "b = _D3.get(h_x_plan)" in source


def test_dispatch_keeps_rule_order_within_a_bucket_and_stops_at_a_route():
    policy = build("provider demo { format echo }\n"
                   'rule a { when model in ["x", "y"] tag "a" }\n'
                   'rule b { when model == "y" and stream route demo/b }\n'
                   'rule c { when model == "y" tag "c" }\n'
                   'rule d { when model == "y" route demo/d }\n'
                   'rule e { when model == "y" tag "never" }\n'
                   + "".join(f'rule pad{i} {{ when model == "pad{i}" tag "pad" }}\n'
                             for i in range(DISPATCH_MIN - 5))
                   + 'rule f { tag "after" }\n')
    assert "_D1" in policy.source()
    d = policy.decide({"model": "y"})
    assert (d.matched, d.tags, d.rule) == (["a", "c", "d"], ("a", "c"), "d")
    d = policy.decide({"model": "y", "stream": True})
    assert (d.matched, d.rule) == (["a", "b"], "b")
    d = policy.decide({"model": "x"})
    assert (d.matched, d.tags) == (["a", "f"], ("a", "after"))


def test_dispatch_on_a_nullable_number():
    text = "provider demo { format echo }\n" + "\n".join(
        f"rule t{i} {{ when temperature == {v} tag \"t{i}\" }}"
        for i, v in enumerate(("0", "0.5", "1", "2", "3", "4", "5", "6", "7", "8")[:max(4, DISPATCH_MIN)]))
    policy = build(text)
    assert "_D1.get(temperature)" in policy.source()
    assert policy.decide({"temperature": 0.0}).tags == ("t0",)
    assert policy.decide({"temperature": 1}).tags == ("t2",)
    assert policy.decide({}).tags == ()


# ---- hygiene of the generated code ----------------------------------------------------------

def global_names(source: str) -> set[str]:
    """Names the generated module reads that it never binds itself."""
    tree = pyast.parse(source)
    loaded, bound = set(), set()
    for node in pyast.walk(tree):
        if isinstance(node, pyast.Name):
            (loaded if isinstance(node.ctx, pyast.Load) else bound).add(node.id)
        elif isinstance(node, pyast.FunctionDef):
            bound.add(node.name)
            bound.update(a.arg for a in node.args.args)
    return loaded - bound


@pytest.mark.parametrize("rules", golden_sources("codegen"), ids=lambda p: p.stem)
def test_generated_code_reads_only_helpers_constants_and_no_builtins(rules: Path):
    policy = build(rules.read_text(encoding="utf-8"), rules.name)
    generated = policy._compiled.generated
    names = global_names(generated.source)
    assert names <= set(RUNTIME_HELPERS) | set(generated.constants)
    assert not names & set(dir(builtins))


def test_user_text_is_inert_in_the_generated_code():
    value = '"); __import__("os").system("false"); ("\n# x\\'
    evil = quote(value)
    policy = build(f'provider demo {{ format echo }}\nrule r {{ when model == {evil} tag {evil} deny 403 {evil} }}\n')
    d = policy.decide({"model": value})
    assert d.tags == (value,) and d.deny == (403, value)
    tree = pyast.parse(policy.source())
    calls = {n.func.id if isinstance(n.func, pyast.Name) else n.func.attr
             for n in pyast.walk(tree) if isinstance(n, pyast.Call)}
    assert "__import__" not in calls and "system" not in calls


def test_every_rule_has_a_file_line_comment_and_a_line_map_entry():
    text = "provider demo { format echo }\n\nrule a { when stream tag \"a\" }\n\n\nrule b { route demo }\n"
    policy = build(text, "dir/x.rules")
    lines = policy.source().splitlines()
    assert "    # dir/x.rules:3: rule a" in lines
    assert "    # dir/x.rules:6: rule b" in lines
    line_map = policy._compiled.generated.line_map
    assert {(loc.line, loc.column) for loc in line_map.values()} == {(3, 6), (6, 6)}
    for number, loc in line_map.items():
        assert f"rule {'a' if loc.line == 3 else 'b'}" in lines[number - 1] or lines[number - 1].strip().startswith("if ")


def test_unreachable_rules_are_not_generated():
    policy = build("provider demo { format echo }\nrule all { route demo }\nrule dead { tag \"zzz-dead\" }\n")
    assert "zzz-dead" not in policy.source() and "'dead'" not in policy.source()
    assert "return _finish" not in policy.source()


def test_generation_is_deterministic_across_hash_seeds(tmp_path):
    path = tmp_path / "p.rules"
    path.write_text((GOLDEN / "codegen" / "actions.rules").read_text() + "\n"
                    + (GOLDEN / "codegen" / "dispatch.rules").read_text().replace("provider demo", "provider demo2"))
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        result = subprocess.run([EDGERULES, "eval", str(path), "--show-code"],
                                capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
        assert result.returncode == 0, result.stderr
        outputs.add(result.stdout)
    assert len(outputs) == 1
    checked = build(path.read_text()).checked
    assert generate(checked, "v").source == generate(checked, "v").source


def test_generated_lines_show_in_tracebacks():
    policy = build("provider demo { format echo }\nrule r { when model == \"x\" route demo }\n")
    filename = policy._compiled.filename
    assert linecache.getline(filename, 1).startswith("# edgerules policy ")


def test_a_file_name_with_a_newline_stays_in_its_comment():
    name = "evil\n    raise SystemExit(3)\n    #"
    policy = build("provider demo { format echo }\nrule r { when model == \"x\" route demo }\n", name)
    assert "    raise SystemExit(3)" not in policy.source().splitlines()
    assert policy.decide({"model": "y"}).action == "none"


def test_decide_signature_is_the_documented_one():
    source = build("provider demo { format echo }\n").source()
    assert f"def decide({', '.join(DECIDE_ARGS)}):" in source
    assert DECIDE_ARGS == ("body", "headers", "key", "path", "method", "ip", "now")
