"""Every example of LANGUAGE.md, read from the document itself, and the behaviour its prose promises."""
from __future__ import annotations

import calendar
import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgerules import PolicyError, load_policy
from edgerules.lang.policy import build_policy, version_of
from edgerules.lang.source import Source
from edgerules.lang.spec import DEFAULT_RETRY_CODES, KeySpec, Price
from procs import EDGERULES, skip_or_fail_in_ci

ROOT = Path(__file__).resolve().parents[1]
LANGUAGE_MD = ROOT.parent / "shared" / "LANGUAGE.md"
ENV = {"OPENAI_API_KEY": "sk-test-openai", "ANTHROPIC_API_KEY": "sk-test-anthropic",
       "MISTRAL_API_KEY": "sk-test-mistral", "EDGERULES_KEY_SEARCH": "search-secret"}
# Providers the document's examples assume besides section 2's openai, local and demo.
MORE_PROVIDERS = """
provider anthropic { format anthropic  api_key env("ANTHROPIC_API_KEY") }
provider mistral   { url "https://api.mistral.ai/v1"  api_key env("MISTRAL_API_KEY") }
provider azure     { url "https://example.openai.azure.com/openai/v1" }
"""


@dataclass
class Block:
    section: str      # "2", "4", ...
    heading: str      # the nearest ### heading inside the section, or ""
    lang: str
    text: str
    line: int         # line of the block's first line in LANGUAGE.md


def read_blocks() -> list[Block]:
    if not LANGUAGE_MD.is_file():
        skip_or_fail_in_ci(f"LANGUAGE.md not found at {LANGUAGE_MD}: the shared/ folder must sit beside the repo")
    blocks, section, heading, fence = [], "", "", None
    for number, line in enumerate(LANGUAGE_MD.read_text(encoding="utf-8").splitlines(), 1):
        if fence is not None:
            if line.startswith("```"):
                blocks.append(Block(section, heading, fence[0], "\n".join(fence[2]) + "\n", fence[1]))
                fence = None
            else:
                fence[2].append(line)
        elif line.startswith("```"):
            fence = (line[3:].strip(), number + 1, [])
        elif m := re.match(r"## (\d+)\.", line):
            section, heading = m.group(1), ""
        elif line.startswith("### "):
            heading = line[4:].strip()
    return blocks


def block(section: str, heading: str = "", lang: str = "") -> Block:
    found = [b for b in read_blocks() if b.section == section and b.heading == heading and b.lang == lang
             and "rule NAME {" not in b.text]   # the `rule NAME { when EXPRESSION ... }` template
    assert len(found) == 1, f"expected one example block in section {section} {heading!r}, found {len(found)}"
    return found[0]


def providers_text() -> str:
    return block("2").text + MORE_PROVIDERS


def build(*texts: str, env=ENV):
    return build_policy([Source(f"{i:02d}.rules", t) for i, t in enumerate(texts)], env)


def ask(policy, body=None, headers=None, key="", now=0.0, **kw):
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]} if body is None else body
    compiled = policy.decide(body, headers, key, now=now, **kw)
    interpreted = policy.decide(body, headers, key, now=now, engine="interpreted", **kw)
    assert compiled.to_dict() == interpreted.to_dict()
    return compiled.to_dict()


def test_the_document_has_the_blocks_these_tests_read():
    blocks = read_blocks()
    assert [(b.section, b.heading, b.lang) for b in blocks] == [
        ("2", "", ""), ("3", "", ""), ("4", "", ""), ("4", "Targets", ""), ("5", "", ""),
        ("8", "", "python")]


# ---- section 1: files -----------------------------------------------------------------------

def test_files_are_read_in_name_order_and_behave_as_one_program(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "20-rules.rules").write_text('rule second { when model == "x" tag "b" }\n')
    (tmp_path / "10-rules.rules").write_text('rule first { when model == "x" tag "a" }\n')
    (tmp_path / "00-providers.rules").write_text("provider demo { format echo }  # used below\n")
    (tmp_path / "sub" / "30.rules").write_text("rule third { route demo }\n")
    (tmp_path / "notes.txt").write_text("rule ignored { deny 403 }\n")
    policy = load_policy(tmp_path)
    assert policy.rules == ("first", "second", "third")
    assert [Path(f).name for f in policy.files] == ["00-providers.rules", "10-rules.rules",
                                                    "20-rules.rules", "30.rules"]
    assert ask(policy, {"model": "x"})["tags"] == ["a", "b"]
    single = load_policy(tmp_path / "00-providers.rules")
    assert single.rules == () and list(single.providers) == ["demo"]


# ---- section 2: providers -------------------------------------------------------------------

def test_section_2_providers_load_with_their_settings():
    policy = build(block("2").text)
    openai, local, demo = (policy.providers[n] for n in ("openai", "local", "demo"))
    assert (openai.url, openai.api_key, openai.format, openai.timeout, openai.cooldown, openai.failures) == (
        "https://api.openai.com/v1", "sk-test-openai", "openai", 30.0, 30.0, 3)
    assert openai.prices == (("gpt-4o", Price(2.5, 10.0)), ("gpt-4o-mini", Price(0.15, 0.6)))
    assert (local.url, local.format, local.api_key, local.timeout, local.cooldown, local.failures) == (
        "http://127.0.0.1:11434/v1", "openai", None, 60.0, 30.0, 5)
    assert (demo.format, demo.url) == ("echo", None)
    assert policy.warnings == ()


def test_section_2_api_key_from_the_process_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-environ")
    policy = build_policy([Source("p.rules", block("2").text)])
    assert policy.providers["openai"].api_key == "sk-from-environ"


def test_section_2_missing_variable_is_a_load_error():
    text = block("2").text
    line_no, line = next((i, l) for i, l in enumerate(text.splitlines(), 1) if 'env("OPENAI_API_KEY")' in l)
    with pytest.raises(PolicyError) as info:
        build_policy([Source("p.rules", text)], {})
    (d,) = info.value.diagnostics
    assert (d.file, d.line, d.column, d.code, d.severity) == (
        "p.rules", line_no, line.index("env(") + 1, "missing-env", "error")
    assert d.message == "environment variable 'OPENAI_API_KEY' is not set"


def test_section_2_literal_secret_is_a_warning_and_quoted_price_names():
    text = block("2").text.replace('env("OPENAI_API_KEY")', '"sk-literal"')
    text += 'provider extra { format echo  price "o1:2024" input 15 output 60 }\n'
    policy = build_policy([Source("p.rules", text)], {})
    assert [w.code for w in policy.warnings] == ["literal-secret"]
    assert policy.providers["openai"].api_key == "sk-literal"
    assert policy.providers["extra"].price("o1:2024") == Price(15.0, 60.0)


def test_anthropic_format_defaults_its_url():
    assert build(MORE_PROVIDERS).providers["anthropic"].url == "https://api.anthropic.com/v1"


# ---- section 3: keys ------------------------------------------------------------------------

def test_section_3_keys():
    policy = build(block("3").text, 'provider demo { format echo }\nrule mine { when key == "search_team" tag "mine" }\n')
    digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert policy.keys == (KeySpec("search_team", "search-secret", None), KeySpec("batch_jobs", None, digest))
    assert hashlib.sha256(b"test").hexdigest() == digest   # the example's digest is of "test"
    assert ask(policy, {"model": "demo/x"}, key="search_team")["tags"] == ["mine"]
    assert ask(policy, {"model": "demo/x"}, key="batch_jobs")["tags"] == []
    with pytest.raises(PolicyError) as info:
        build(block("3").text, env={})
    assert [d.code for d in info.value.diagnostics] == ["missing-env"]


def test_with_no_key_declared_the_key_field_is_empty():
    policy = build('provider demo { format echo }\nrule open { when key == "" tag "open" }\n')
    assert ask(policy, {"model": "demo/x"})["tags"] == ["open"]


# ---- section 4: targets ---------------------------------------------------------------------

EXPECTED_ROUTES = {
    "openai/gpt-4o": "openai/gpt-4o",
    '"local/llama3:8b"': "local/llama3:8b",
    "openai": "openai",
    "fallback [openai/gpt-4o, anthropic/claude-sonnet-4, local/llama3]":
        {"fallback": ["openai/gpt-4o", "anthropic/claude-sonnet-4", "local/llama3"]},
    "split [80% openai/gpt-4o, 20% anthropic/claude-sonnet-4]":
        {"split": [{"weight": 80.0, "target": "openai/gpt-4o"},
                   {"weight": 20.0, "target": "anthropic/claude-sonnet-4"}]},
    "split [50% openai/gpt-4o, 50% openai/gpt-4o-mini] by key":
        {"split": [{"weight": 50.0, "target": "openai/gpt-4o"},
                   {"weight": 50.0, "target": "openai/gpt-4o-mini"}], "by": ["team-a"]},
    "fastest [openai/gpt-4o, azure/gpt-4o]": {"fastest": ["openai/gpt-4o", "azure/gpt-4o"]},
    "split [90% fallback [openai/gpt-4o, local/llama3], 10% demo/echo]":
        {"split": [{"weight": 90.0, "target": {"fallback": ["openai/gpt-4o", "local/llama3"]}},
                   {"weight": 10.0, "target": "demo/echo"}]},
}


def target_lines() -> list[str]:
    lines = [l.strip() for l in block("4", "Targets").text.splitlines()]
    return [l for l in lines if l.startswith("route ")]


def test_section_4_every_target_line_routes_as_written():
    lines = target_lines()
    assert len(lines) == 8
    for line in lines:
        policy = build(providers_text(), f"rule only {{\n    {line}\n}}\n")
        decision = ask(policy, key="team-a")
        target = line.split("#")[0].strip()[len("route "):].strip()
        assert decision["action"] == "route" and decision["rule"] == "only", line
        if target in EXPECTED_ROUTES:
            assert decision["route"] == EXPECTED_ROUTES[target], line
        assert not decision["implicit"]


def test_section_4_target_lines_together_each_behind_a_condition():
    rules = "\n".join(f'rule t{i} {{\n    when model == "t{i}"\n    {line}\n}}' for i, line in enumerate(target_lines()))
    policy = build(providers_text(), rules)
    assert policy.warnings == ()
    for i, line in enumerate(target_lines()):
        assert ask(policy, {"model": f"t{i}"}, key="team-a")["rule"] == f"t{i}"


# ---- section 5: the example -----------------------------------------------------------------

@pytest.fixture(scope="module")
def example():
    return build(providers_text(), block("5").text)


def test_section_5_loads_without_warnings(example):
    assert example.rules == ("block_huge_prompts", "free_tier", "deterministic_answers",
                             "eu_data_stays_in_eu", "smart_alias", "everything_else")
    assert example.warnings == ()


def test_section_5_huge_prompt_is_denied(example):
    d = ask(example, {"model": "smart", "messages": [{"role": "user", "content": "x" * 130_000}]})
    assert (d["action"], d["rule"], d["matched"]) == ("deny", "block_huge_prompts", ["block_huge_prompts"])
    assert d["deny"] == {"status": 413, "message": "prompt is larger than 32k tokens"}
    assert d["route"] is None


def test_section_5_free_tier_limits_accumulate_and_the_walk_goes_on(example):
    d = ask(example, headers={"X-Plan": "free"}, key="search_team")
    assert d["matched"] == ["free_tier", "everything_else"]
    assert d["limits"] == [
        {"id": "free_tier#0", "rule": "free_tier", "kind": "requests", "amount": 20, "window": 60,
         "by": ["key"], "values": ["search_team"], "else": None},
        {"id": "free_tier#1", "rule": "free_tier", "kind": "tokens", "amount": 100_000, "window": 86_400,
         "by": ["key"], "values": ["search_team"], "else": "demo/echo"},
    ]
    assert d["route"] == {"fallback": ["openai/gpt-4o-mini", "local/llama3"]}


def test_section_5_deterministic_answers_are_cached(example):
    body = {"model": "gpt-4o", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    d = ask(example, body)
    assert d["cache"] == {"ttl": 3600.0, "by": [], "values": [], "rule": "deterministic_answers"}
    assert ask(example, {**body, "stream": True})["cache"] is None
    assert ask(example, {**body, "temperature": 0.2})["cache"] is None
    missing = {k: v for k, v in body.items() if k != "temperature"}
    assert ask(example, missing)["cache"] is None   # a comparison with a missing value is false


def test_section_5_eu_data_stays_in_eu(example):
    d = ask(example, {"model": "smart"}, headers={"x-edgerules-metadata": '{"region": "eu"}'})
    assert (d["rule"], d["route"]) == ("eu_data_stays_in_eu", {"fallback": ["mistral/mistral-large", "local/llama3"]})


def test_section_5_smart_alias(example):
    d = ask(example, {"model": "smart"})
    assert d["rule"] == "smart_alias"
    assert d["retry"] == {"attempts": 5, "backoff": "exponential", "delay": 0.2, "max": 5.0, "jitter": True,
                          "on": ["429", "5xx", "timeout"]}
    assert d["route"] == {"split": [{"weight": 80.0, "target": "openai/gpt-4o"},
                                    {"weight": 20.0, "target": "anthropic/claude-sonnet-4"}]}


def test_section_5_everything_else(example):
    d = ask(example, {"model": "anything"})
    assert d["matched"] == ["everything_else"]
    assert d["retry"] == {"attempts": 2, "backoff": "constant", "delay": 0.1, "max": 5.0, "jitter": False,
                          "on": sorted(DEFAULT_RETRY_CODES)}
    assert d["route"] == {"fallback": ["openai/gpt-4o-mini", "local/llama3"]}
    assert (d["timeout"], d["deadline"], d["tags"], d["log"]) == (None, 300.0, [], "meta")


# ---- section 4: evaluation, actions, expressions (the prose) --------------------------------

SEMANTICS = """
provider demo { format echo }
rule a { when header("x-t") == "1"  tag "a"  cache ttl 1m  retry 1  timeout 5s  deadline 1m  log none }
rule b { when header("x-t") == "1"  tag "b"  cache off     retry 2  timeout 6s  deadline 2m  log full
         limit requests 5 per 1s }
rule c { when header("x-deny") == "1"  deny 403 "stop"  tag "never" }
rule d { when model == "routed"  route demo/echo }
rule e { tag "after" }
"""


def test_tags_and_limits_accumulate_settings_last_wins_deny_and_route_end_the_walk():
    policy = build(SEMANTICS)
    d = ask(policy, {"model": "routed"}, headers={"x-t": "1"})
    assert d["matched"] == ["a", "b", "d"] and d["rule"] == "d"
    assert d["tags"] == ["a", "b"]
    assert (d["cache"], d["retry"]["attempts"], d["timeout"], d["deadline"], d["log"]) == ("off", 2, 6.0, 120.0, "full")
    assert [l["rule"] for l in d["limits"]] == ["b"]
    denied = ask(policy, {"model": "routed"}, headers={"x-t": "1", "x-deny": "1"})
    assert (denied["action"], denied["rule"], denied["tags"]) == ("deny", "c", ["a", "b"])
    assert denied["deny"] == {"status": 403, "message": "stop"}


def test_without_a_route_provider_model_goes_there_and_anything_else_is_404():
    policy = build(SEMANTICS)
    d = ask(policy, {"model": "demo/echo-2"})
    assert (d["action"], d["route"], d["implicit"], d["matched"], d["rule"]) == (
        "route", "demo/echo-2", True, ["e"], None)
    for model in ("gpt-4o", "nobody/x", "demo/", ""):
        d = ask(policy, {"model": model})
        assert d["action"] == "none" and d["route"] is None
        assert (d["error"]["status"], d["error"]["code"]) == (404, "model_not_found")
    assert "error" not in ask(policy, {"model": "routed"})


def field_policy(cond: str):
    return build(f"provider demo {{ format echo }}\nrule hit {{ when {cond} tag \"hit\" }}\n")


def hit(cond: str, body=None, headers=None, **kw) -> bool:
    return ask(field_policy(cond), body if body is not None else {"model": "m"}, headers, **kw)["tags"] == ["hit"]


def test_fields_model_stream_user_messages():
    assert hit('model == "m"')
    assert hit("stream", {"stream": True}) and not hit("stream", {"stream": False}) and not hit("stream", {})
    assert hit('user == ""', {}) and hit('user == "u1"', {"user": "u1"})
    assert hit("messages == 3", {"messages": [{"role": "user", "content": ""}] * 3})
    assert hit("messages == 0", {})


def test_fields_temperature_and_max_tokens_missing_compare_false():
    for op in ("==", "!=", "<", "<=", ">", ">="):
        assert not hit(f"temperature {op} 1", {}), op
        assert not hit(f"max_tokens {op} 1", {"max_tokens": None}), op
    assert hit("not (temperature > 1)", {})
    assert not hit("temperature not in [1]", {})
    assert hit("temperature == 0", {"temperature": 0.0}) and hit("max_tokens >= 100", {"max_tokens": 100})


def test_field_input_tokens_is_an_estimate_of_the_prompt():
    body = {"messages": [{"role": "user", "content": "x" * 4000}]}
    assert hit("input_tokens > 900", body) and hit("input_tokens < 1100", body)
    assert hit("input_tokens < 10", {"messages": [{"role": "user", "content": "hi"}]})


def test_fields_of_the_http_request():
    assert hit('path == "/v1/embeddings" and method == "GET" and ip == "10.1.2.3"',
               path="/v1/embeddings", method="GET", ip="10.1.2.3")


def test_field_header_name_is_case_insensitive_and_empty_when_absent():
    assert hit('header("X-Plan") == "free"', headers={"x-plan": "free"})
    assert hit('header("x-plan") == "free"', headers={"X-PLAN": "free"})
    assert hit('header("x-plan") == ""', headers={})


def test_field_metadata():
    def meta(value):
        return {"x-edgerules-metadata": value}
    assert hit('metadata.region == "eu"', headers=meta('{"region": "eu"}'))
    assert hit('metadata.n == "3"', headers=meta('{"n": 3}'))
    assert hit('metadata.obj == "{\\"a\\":[1,true]}"', headers=meta('{"obj": {"a": [1, true]}}'))
    assert hit('metadata.region == ""', headers=meta('{"other": "x"}'))
    assert hit('metadata.region == ""', headers={})
    assert hit('metadata.region == ""', headers=meta("not json"))


def test_fields_hour_and_weekday_are_utc():
    monday_0930 = calendar.timegm((2024, 1, 1, 9, 30, 0))          # 2024-01-01 was a Monday
    assert hit("hour == 9 and weekday == 0", now=monday_0930)
    sunday_2359 = calendar.timegm((2024, 1, 7, 23, 59, 0))
    assert hit("hour == 23 and weekday == 6", now=sunday_2359)


@pytest.mark.parametrize("cond, body, expected", [
    ('model in ["a", "b"]', {"model": "b"}, True),
    ('model not in ["a", "b"]', {"model": "b"}, False),
    ('model matches "^gpt-[0-9]+o?$"', {"model": "gpt-4o"}, True),
    ('model matches "\\d"', {"model": "gpt-4o"}, True),          # "\d" is kept as written
    ('model matches "^GPT"', {"model": "gpt-4o"}, False),
    ('model contains "4o"', {"model": "gpt-4o"}, True),
    ('model starts_with "gpt"', {"model": "gpt-4o"}, True),
    ('model ends_with "mini"', {"model": "gpt-4o"}, False),
    ("max_tokens > 100_000", {"max_tokens": 100_001}, True),
    ("temperature <= 0.5", {"temperature": 0.5}, True),
    ("250ms < 1s", {}, True),
    ("1m == 60s and 1h == 60m and 1d == 24h", {}, True),
    ('model == "a" or model == "b" and stream', {"model": "a"}, True),
    ('(model == "a" or model == "b") and stream', {"model": "a"}, False),
    ('not model == "a"', {"model": "b"}, True),
    ("true and not false", {}, True),
])
def test_operators_and_literals(cond, body, expected):
    assert hit(cond, body) is expected


# ---- section 8: the Python API --------------------------------------------------------------

def test_section_8_python_api_exactly_as_written(monkeypatch):
    code = block("8", lang="python").text
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(code, str(LANGUAGE_MD), "exec"), namespace)
    policy, decision = namespace["policy"], namespace["decision"]
    out = decision.to_dict()
    comment = code[code.index("decision.to_dict()"):code.index("policy.version")]
    promised = re.findall(r'"(\w+)":', comment)
    assert set(promised) >= {"matched", "action", "route", "deny", "limits", "cache", "retry", "timeout",
                             "tags", "log"}
    assert set(promised) <= set(out)
    assert out["action"] in ("route", "deny", "none")
    assert isinstance(out["matched"], list) and isinstance(out["limits"], list) and isinstance(out["tags"], list)
    json.dumps(out)
    assert re.fullmatch(r"[0-9a-f]{12}", policy.version)
    assert policy.version == version_of(list(policy.sources.values()))
    source = policy.source()
    assert "def decide(" in source
    compile(source, "<policy>", "exec")


def test_section_8_deny_shape_and_version_follows_content():
    policy = build('provider demo { format echo }\nrule no { deny 451 "gone" }\n')
    assert ask(policy, {"model": "x"})["deny"] == {"status": 451, "message": "gone"}
    same = build('provider demo { format echo }\nrule no { deny 451 "gone" }\n')
    other = build('provider demo { format echo }\nrule no { deny 451 "went" }\n')
    assert policy.version == same.version != other.version


def test_section_8_policy_error_diagnostics_and_rendering(tmp_path):
    path = tmp_path / "broken.rules"
    path.write_text('provider demo { format echo }\nrule r {\n    when modle == "x"\n    deny 600\n}\n')
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    err = info.value
    assert [(d.file, d.line, d.column, d.severity) for d in err.diagnostics] == [
        (str(path), 3, 10, "error"), (str(path), 4, 10, "error")]
    assert [d.message for d in err.diagnostics] == [
        "unknown field 'modle'", "deny status must be between 400 and 599, not 600"]
    check = subprocess.run([EDGERULES, "check", str(path)], capture_output=True,
                           text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert check.returncode == 1
    assert check.stderr.strip() == str(err)
