"""check.py: one test per error and warning, each asserting the code, message and exact position."""
from __future__ import annotations

import pytest

from edgerules.lang.errors import Diagnostic, PolicyError
from edgerules.lang.policy import build_policy, load_policy
from edgerules.lang.source import Source
from edgerules.lang.spec import DEFAULT_RETRY_CODES, Fallback, Price, RetrySpec, Single, Split

DEMO = "provider demo { format echo }\n"   # line 1 of most policies below


def load(text: str, env: dict | None = None, name: str = "t.rules"):
    return build_policy([Source(name, text)], {} if env is None else env)


def errors_of(text: str, env: dict | None = None) -> list[Diagnostic]:
    with pytest.raises(PolicyError) as info:
        load(text, env)
    return list(info.value.diagnostics)


def only(text: str, env: dict | None = None) -> Diagnostic:
    diags = errors_of(text, env)
    assert len(diags) == 1, [d.render() for d in diags]
    return diags[0]


def where(d: Diagnostic) -> tuple:
    return (d.file, d.line, d.column, d.severity, d.code, d.message)


def rule(body: str) -> str:
    """DEMO, then `rule r {` on line 2 and body from line 3 on."""
    return DEMO + "rule r {\n" + body + "\n}\n"


# ---- errors ---------------------------------------------------------------------------------

def test_unknown_field_with_did_you_mean():
    d = only(rule('    when modle == "gpt-4o"\n    route demo'))
    assert where(d) == ("t.rules", 3, 10, "error", "unknown-field", "unknown field 'modle'")
    assert d.hint == "did you mean 'model'?"
    assert d.location.end_column == 15


@pytest.mark.parametrize("written, message, hint", [
    ('headr("x")', "unknown field 'headr(\"x\")'", "did you mean 'header(\"...\")'?"),
    ("metdata.team", "unknown field 'metdata.team'", "did you mean 'metadata.NAME'?"),
    ("max_token", "unknown field 'max_token'", "did you mean 'max_tokens'?"),
    ("zzzzz", "unknown field 'zzzzz'", None),
])
def test_unknown_field_suggestions(written, message, hint):
    d = only(rule(f'    when {written} == "a"\n    route demo'))
    assert (d.line, d.column, d.code, d.message, d.hint) == (3, 10, "unknown-field", message, hint)


def test_field_written_in_the_wrong_form():
    diags = errors_of(rule('    when header == "a" and metadata("x") == "b" and model.x == "c"\n    route demo'))
    assert [(d.column, d.code, d.message) for d in diags] == [
        (10, "field-form", "field 'header' is written header(\"x-name\")"),
        (28, "field-form", "field 'metadata' is written metadata.NAME"),
        (53, "field-form", "field 'model' is written model"),
    ]


def test_comparison_between_different_types():
    d = only(rule('    when max_tokens == "100"\n    route demo'))
    assert where(d) == ("t.rules", 3, 21, "error", "type-mismatch", "cannot compare number with string")


@pytest.mark.parametrize("cond, column, message", [
    ('model < "b"', 16, "'<' compares numbers, not strings"),
    ("stream >= true", 17, "'>=' compares numbers, not bools"),
    ('hour in ["1"]', 10, "cannot look for a number in a list of strings"),
    ('hour in [1, "1"]', 18, "a list cannot mix number and string"),
    ('model in "abc"', 19, "'in' needs a list such as [\"a\", \"b\"]"),
    ('model == ["a"]', 16, "a list can only follow 'in' or 'not in'"),
    ('hour matches "1"', 10, "'matches' needs a string on its left, not a number"),
    ("model matches user", 24, "'matches' needs a string literal pattern"),
    ("model contains 1", 25, "'contains' compares strings, not a number"),
    ("hour < 5s", 15, "cannot compare number with duration"),
    ("model", 10, "a condition must be true or false, not a string"),
    ("stream and hour", 21, "'and' needs true or false, not a number"),
    ("not user", 14, "'not' needs true or false, not a string"),
])
def test_type_mismatches(cond, column, message):
    d = only(rule(f"    when {cond}\n    route demo"))
    assert (d.line, d.column, d.code, d.message) == (3, column, "type-mismatch", message)


def test_by_takes_values_not_lists():
    d = only(rule('    cache ttl 1h by ["a"]\n    route demo'))
    assert (d.line, d.column, d.code, d.message) == (3, 21, "type-mismatch", "'by' takes values, not a list")


def test_invalid_regex_backreference_at_the_pattern():
    d = only(rule('    when model matches "(a)\\1"\n    route demo'))
    assert where(d) == ("t.rules", 3, 24, "error", "invalid-regex",
                        "invalid regex '(a)\\1': invalid escape sequence: \\1")
    assert d.location.end_column == 31
    assert d.hint == "patterns run on RE2: no backreferences or lookaround"


def test_invalid_regex_lookahead_at_the_pattern():
    d = only(rule('    when user matches "^a(?=b)"\n    route demo'))
    assert where(d) == ("t.rules", 3, 23, "error", "invalid-regex",
                        "invalid regex '^a(?=b)': invalid perl operator: (?=")


def test_invalid_regex_unbalanced():
    d = only(rule('    when user matches "(ab"\n    route demo'))
    assert (d.column, d.code, d.message) == (23, "invalid-regex", "invalid regex '(ab': missing ): (ab")


def test_unknown_provider_in_a_target():
    d = only(rule("    route fallback [demo/a, dmeo/b]"))
    assert where(d) == ("t.rules", 3, 29, "error", "unknown-provider", "unknown provider 'dmeo'")
    assert d.hint == "did you mean 'demo'?"
    d = only(rule("    route zzz"))
    assert (d.column, d.hint) == (11, "declare it with provider NAME { ... }")


@pytest.mark.parametrize("where_", ["route {}", "limit requests 1 per 1s else route {}\n    route demo"])
def test_unknown_provider_anywhere_a_target_goes(where_):
    d = only(rule("    " + where_.format("split [50% demo/a, 50% fallback [demo/b, nope/c]]")))
    assert (d.code, d.message) == ("unknown-provider", "unknown provider 'nope'")


def test_split_percentages_not_adding_to_100():
    d = only(rule("    route split [80% demo/a, 30% demo/b]"))
    assert where(d) == ("t.rules", 3, 11, "error", "split-total", "split percentages add up to 110, not 100")
    d = only(rule("    route split [33.3% demo/a, 66.6% demo/b]"))
    assert d.message == "split percentages add up to 99.9, not 100"
    d = only(rule("    route split [100% demo/a, 0% demo/b]"))
    assert d.message == "split percentages must be above 0"


def test_split_percentages_may_be_decimals_that_add_to_100():
    policy = load(rule("    route split [33.5% demo/a, 66.5% demo/b]"))
    assert policy.checked.rules[0].actions[0].value.weights == (33.5, 66.5)


@pytest.mark.parametrize("n", [0, 6, 2.5])
def test_retry_outside_1_to_5(n):
    d = only(rule(f"    retry {n}\n    route demo"))
    assert where(d) == ("t.rules", 3, 11, "error", "retry-range", f"retry takes 1 to 5 attempts, not {n}")


def test_retry_code_must_be_a_status():
    d = only(rule("    retry 2 on 429, 700\n    route demo"))
    assert where(d) == ("t.rules", 3, 21, "error", "retry-code", "'700' is not an HTTP status")


@pytest.mark.parametrize("status", [399, 600, 200])
def test_deny_status_outside_400_599(status):
    d = only(rule(f'    deny {status} "x"'))
    assert where(d) == ("t.rules", 3, 10, "error", "deny-status",
                        f"deny status must be between 400 and 599, not {status}")


@pytest.mark.parametrize("window", ["500ms", "1500ms", "0s"])
def test_limit_window_under_one_second_or_not_whole(window):
    d = only(rule(f"    limit requests 10 per {window}\n    route demo"))
    assert where(d) == ("t.rules", 3, 27, "error", "limit-window",
                        "a limit window must be whole seconds, at least 1s")
    assert d.location.end_column == 27 + len(window)


def test_limit_amounts():
    diags = errors_of(rule("    limit requests 1.5 per 1s\n    limit cost 0 per 1s\n    route demo"))
    assert [(d.line, d.column, d.code, d.message) for d in diags] == [
        (3, 20, "bad-number", "a requests limit needs a positive whole number"),
        (4, 16, "bad-number", "a cost limit needs a positive number"),
    ]


def test_sticky_split_under_else_route():
    d = only(rule("    limit requests 1 per 1s else route split [50% demo/a, 50% demo/b] by key\n    route demo"))
    assert (d.line, d.column, d.code, d.message) == (
        3, 40, "sticky-else", "a split under 'else route' cannot use 'by'")


def test_duplicate_rule():
    diags = errors_of(DEMO + 'rule r { when model == "a" route demo }\nrule r { route demo }\n')
    assert [where(d) for d in diags] == [
        ("t.rules", 3, 6, "error", "duplicate-rule", "rule 'r' is already declared at t.rules:2:6")]


def test_duplicate_provider():
    d = only(DEMO + "provider demo { format echo }\n")
    assert where(d) == ("t.rules", 2, 10, "error", "duplicate-provider",
                        "provider 'demo' is already declared at t.rules:1:10")


def test_duplicate_key():
    d = only('key k { sha256 "' + "a" * 64 + '" }\nkey k { sha256 "' + "b" * 64 + '" }\n')
    assert where(d) == ("t.rules", 2, 5, "error", "duplicate-key", "key 'k' is already declared at t.rules:1:5")


def test_duplicates_across_files_name_the_first_file():
    with pytest.raises(PolicyError) as info:
        build_policy([Source("a.rules", DEMO + "rule r { deny 403 }"),
                      Source("b.rules", "provider demo { format echo }\n\nrule r { deny 403 }")], {})
    errors = [where(d) for d in info.value.errors]
    assert errors == [
        ("b.rules", 1, 10, "error", "duplicate-provider", "provider 'demo' is already declared at a.rules:1:10"),
        ("b.rules", 3, 6, "error", "duplicate-rule", "rule 'r' is already declared at a.rules:2:6"),
    ]


def test_duplicate_setting():
    diags = errors_of("provider demo {\n    format echo\n    format echo\n"
                      "    price a input 1 output 1\n    price a input 2 output 2\n}\n")
    assert [where(d) for d in diags] == [
        ("t.rules", 3, 12, "error", "duplicate-setting", "'format' is already set at t.rules:2:12"),
        ("t.rules", 5, 5, "error", "duplicate-setting", "price of 'a' is already set at t.rules:4:5"),
    ]


def test_bad_format():
    d = only("provider demo {\n    format antropic\n}\n")
    assert where(d) == ("t.rules", 2, 12, "error", "bad-format", "unknown format 'antropic'")
    assert d.hint == "did you mean 'anthropic'?"
    d = only("provider demo {\n    format grpc\n}\n")
    assert (d.message, d.hint) == ("unknown format 'grpc'", "use openai, anthropic, azure, gemini, bedrock or echo")


def test_missing_env_variable():
    text = 'provider p {\n    url "http://x"\n    api_key env("EDGERULES_TEST_UNSET")\n}\n'
    d = only(text)
    assert where(d) == ("t.rules", 3, 13, "error", "missing-env",
                        "environment variable 'EDGERULES_TEST_UNSET' is not set")
    assert d.hint == "export EDGERULES_TEST_UNSET=... before loading the policy"
    assert load(text, {"EDGERULES_TEST_UNSET": "sk"}).providers["p"].api_key == "sk"


def test_missing_env_reads_the_process_environment_by_default(monkeypatch, tmp_path):
    path = tmp_path / "p.rules"
    path.write_text('provider p { url env("EDGERULES_TEST_URL") }\n')
    monkeypatch.delenv("EDGERULES_TEST_URL", raising=False)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.diagnostics[0].code == "missing-env"
    monkeypatch.setenv("EDGERULES_TEST_URL", "http://example.test/v1/")
    assert load_policy(path).providers["p"].url == "http://example.test/v1"


def test_missing_url():
    d = only("provider p {\n    api_key env(\"K\")\n}\n", {"K": "v"})
    assert where(d) == ("t.rules", 1, 10, "error", "missing-url", "provider 'p' needs a url")


def test_key_needs_exactly_one_secret():
    diags = errors_of('key k { }\nkey j { secret "" }\nkey i { secret env("S") sha256 "' + "a" * 64 + '" }\n',
                      {"S": "x"})
    assert [(d.line, d.column, d.code, d.message) for d in diags] == [
        (1, 5, "key-secret", "key 'k' needs exactly one of secret or sha256"),
        (2, 9, "key-secret", "the secret of key 'j' is empty"),
        (3, 5, "key-secret", "key 'i' needs exactly one of secret or sha256"),
    ]


def test_bad_sha256():
    d = only('key k {\n    sha256 "abc"\n}\n')
    assert where(d) == ("t.rules", 2, 12, "error", "bad-sha256", "sha256 must be 64 hexadecimal digits")


def test_durations_must_be_positive():
    diags = errors_of("provider p {\n    format echo\n    timeout 0s\n    cooldown 0s after 0 failures\n}\n"
                      "rule r { cache ttl 0s timeout 0s deadline 0s retry 1 backoff constant -1s route p }\n")
    assert [(d.line, d.column, d.code, d.message) for d in diags] == [
        (3, 13, "bad-duration", "timeout must be longer than zero"),
        (4, 5, "bad-duration", "cooldown must be longer than zero"),
        (4, 23, "bad-number", "failures must be a whole number of at least 1"),
        (6, 10, "bad-duration", "cache ttl must be longer than zero"),
        (6, 23, "bad-duration", "timeout must be longer than zero"),
        (6, 34, "bad-duration", "deadline must be longer than zero"),
        (6, 46, "bad-duration", "retry delays cannot be negative"),
    ]


def test_negative_price():
    d = only("provider p {\n    format echo\n    price a input -1 output 1\n}\n")
    assert where(d) == ("t.rules", 3, 5, "error", "bad-number", "prices cannot be negative")


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "nope")
    d = info.value.diagnostics[0]
    assert (d.code, d.location) == ("no-rules", None)
    assert "no such file or directory" in d.message
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert info.value.diagnostics[0].code == "no-rules"


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "bad.rules"
    path.write_bytes(b"rule r {\n  deny 403 \"caf\xe9\"\n}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    d = info.value.diagnostics[0]
    assert (d.file, d.line, d.column, d.code) == (str(path), 2, 16, "encoding")


# ---- warnings -------------------------------------------------------------------------------

def test_rule_after_an_unconditional_route_never_runs():
    policy = load(DEMO + "rule catch_all {\n    route demo\n}\nrule later {\n    when model == \"x\"\n    deny 403\n}\n")
    (w,) = policy.warnings
    assert where(w) == ("t.rules", 5, 6, "warning", "unreachable-rule", "rule 'later' can never run")
    assert w.hint == "rule 'catch_all' at t.rules:2:6 always ends the walk"
    assert "later" not in policy.source()


def test_rule_after_an_unconditional_deny_never_runs():
    policy = load(DEMO + "rule stop { deny 403 }\nrule later { route demo }\n")
    assert [where(w) for w in policy.warnings] == [
        ("t.rules", 3, 6, "warning", "unreachable-rule", "rule 'later' can never run")]


def test_conditional_or_non_terminal_rules_do_not_hide_later_ones():
    policy = load(DEMO + 'rule a { when model == "x" route demo }\nrule b { tag "t" }\nrule c { route demo }\n')
    assert policy.warnings == ()


def test_action_after_deny_or_route_never_runs():
    policy = load(rule('    deny 403\n    tag "never"'))
    assert [where(w) for w in policy.warnings] == [
        ("t.rules", 4, 5, "warning", "unreachable-action",
         "this action never runs: the rule already ended the walk")]


def test_literal_secret():
    policy = load('provider p {\n    url "http://x"\n    api_key "sk-live-123"\n}\nkey k { secret "hunter2" }\n')
    assert [where(w) for w in policy.warnings] == [
        ("t.rules", 3, 13, "warning", "literal-secret", "the api_key of provider 'p' is written literally in the file"),
        ("t.rules", 5, 16, "warning", "literal-secret", "the secret of key 'k' is written literally in the file"),
    ]
    assert policy.warnings[0].hint == 'prefer env("NAME") so the secret stays out of the policy files'


def test_missing_price_with_a_cost_limit():
    text = ("provider p {\n    format echo\n    price known input 1 output 2\n}\n"
            "rule r {\n    limit cost 5 per 1d\n    route fallback [p/known, p/unknown, p]\n}\n")
    policy = load(text)
    assert [where(w) for w in policy.warnings] == [
        ("t.rules", 7, 5, "warning", "missing-price", "no price for 'p/unknown': its cost counts as zero")]
    assert policy.warnings[0].hint == "add price unknown input USD output USD to provider 'p'"
    without_cost = load(text.replace("limit cost 5", "limit requests 5"))
    assert without_cost.warnings == ()


# ---- several diagnostics --------------------------------------------------------------------

BROKEN = """provider demo { format echo }
provider demo { format echo }
rule b {
    when modle == "x"
    deny 600
}
rule a {
    retry 9
    route split [50% demo/a, 40% nope/b]
}
"""


def test_every_error_is_reported_sorted_with_a_summary():
    with pytest.raises(PolicyError) as info:
        build_policy([Source("z.rules", 'provider p { url "http://x" api_key "literal" }\n'),
                      Source("a.rules", BROKEN)], {})
    err = info.value
    assert [(d.file, d.line, d.column, d.code) for d in err.diagnostics] == [
        ("a.rules", 2, 10, "duplicate-provider"),
        ("a.rules", 4, 10, "unknown-field"),
        ("a.rules", 5, 10, "deny-status"),
        ("a.rules", 8, 11, "retry-range"),
        ("a.rules", 9, 11, "split-total"),
        ("a.rules", 9, 34, "unknown-provider"),
        ("z.rules", 1, 37, "literal-secret"),
    ]
    assert len(err.errors) == 6
    text = str(err)
    assert text.endswith("\n6 errors, 1 warning")
    assert text.startswith(
        "a.rules:2:10: error[duplicate-provider]: provider 'demo' is already declared at a.rules:1:10\n"
        "  2 | provider demo { format echo }\n"
        "    |          ^^^^\n"
        "a.rules:4:10: error[unknown-field]: unknown field 'modle'\n"
        '  4 |     when modle == "x"\n'
        "    |          ^^^^^\n"
        "  hint: did you mean 'model'?\n")
    assert (err.diagnostics[0].file, err.diagnostics[0].line, err.diagnostics[0].column,
            err.diagnostics[0].severity) == ("a.rules", 2, 10, "error")


def test_diagnostic_to_dict():
    d = only(rule("    retry 6\n    route demo"))
    assert d.to_dict() == {"code": "retry-range", "message": "retry takes 1 to 5 attempts, not 6",
                           "severity": "error", "file": "t.rules", "line": 3, "column": 11, "hint": None}


# ---- what a checked policy holds: defaults --------------------------------------------------

def test_provider_defaults():
    policy = load('provider o { url "http://x/v1/" }\nprovider a { format anthropic }\nprovider e { format echo }\n')
    o, a, e = (policy.providers[n] for n in "oae")
    assert (o.format, o.url, o.api_key, o.timeout, o.cooldown, o.failures, o.prices) == (
        "openai", "http://x/v1", None, 60.0, 30.0, 5, ())
    assert (a.format, a.url) == ("anthropic", "https://api.anthropic.com/v1")
    assert (e.format, e.url) == ("echo", None)


def test_action_defaults():
    policy = load(DEMO + "rule r {\n    deny 403\n}\n")
    assert policy.decide({"model": "x"}).deny == (403, "request denied by rule 'r'")
    policy = load(DEMO + "rule r {\n    retry 2\n    route demo\n}\n")
    d = policy.decide({"model": "x"})
    assert d.retry == RetrySpec(2, "exponential", 0.1, 5.0, False, DEFAULT_RETRY_CODES)
    assert (d.timeout, d.deadline, d.log, d.tags, d.cache) == (None, 300.0, "meta", (), None)


def test_checked_targets_and_prices():
    policy = load('provider p { format echo price gpt-4o input 2.50 output 10 price "o1:2024" input 15 output 60 }\n'
                  'rule r { route split [90% fallback [p/gpt-4o, "p/o1:2024"], 10% p] }\n')
    target = policy.checked.rules[0].actions[0].value
    assert target == Split((90.0, 10.0), (Fallback((Single("p", "gpt-4o"), Single("p", "o1:2024"))),
                                          Single("p", None)), False, 1)
    assert policy.providers["p"].price("o1:2024") == Price(15.0, 60.0)
    assert policy.providers["p"].price("other") is None


def test_every_diagnostic_code_is_documented_in_the_guide():
    import re
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text() for p in (root / "engine").rglob("*.py"))
    codes = set(re.findall(r'(?:error|warn)\(\s*"([a-z0-9-]+)"', text))
    codes |= set(re.findall(r'Diagnostic\(\s*"([a-z0-9-]+)"', text))
    codes |= {f"duplicate-{kind}" for kind in ("rule", "provider", "key")}
    assert {"syntax", "unknown-field", "missing-env", "unreachable-rule"} <= codes
    guide = (root / "docs" / "language.md").read_text()
    missing = sorted(c for c in codes if f"`{c}`" not in guide)
    assert not missing, f"docs/language.md does not document {missing}"


def test_caret_lines_up_under_tab_indented_code():
    with pytest.raises(PolicyError) as info:
        load(DEMO + 'rule r {\n\twhen modle == "x"\n\troute demo\n}\n')
    assert str(info.value).splitlines()[1:3] == ['  3 | \twhen modle == "x"', "    | \t     ^^^^^"]


def test_shown_line_is_the_reported_line_whatever_separators_the_file_holds():
    text = 'provider demo { format echo } # a\u2028b \x0c feed\r\nrule r {\r\n    when modle == "x"\r\n    route demo\r\n}\r\n'
    with pytest.raises(PolicyError) as info:
        load(text)
    assert str(info.value).splitlines()[:3] == [
        "t.rules:3:10: error[unknown-field]: unknown field 'modle'",
        '  3 |     when modle == "x"',
        "    |          ^^^^^",
    ]


def test_a_retry_option_given_twice_is_an_error():
    from edgerules.lang.errors import PolicyError
    from edgerules.lang.policy import build_policy
    from edgerules.lang.source import Source
    text = 'provider p { format echo }\nrule r { retry 2 max 1s max 2s route p/m }\n'
    with pytest.raises(PolicyError) as info:
        build_policy([Source("t.rules", text)])
    (d,) = info.value.errors
    assert (d.code, d.line, d.column) == ("duplicate-option", 2, 25)
    assert d.message == "'max' is given twice in this retry"


def test_a_flood_of_errors_is_capped_in_the_report():
    from edgerules.lang.errors import MAX_ERRORS, PolicyError
    from edgerules.lang.policy import build_policy
    from edgerules.lang.source import Source
    text = "".join(f'rule r{i} {{ when modle == "x" route nowhere }}\n' for i in range(60))
    with pytest.raises(PolicyError) as info:
        build_policy([Source("t.rules", text)])
    assert len(info.value.diagnostics) == 120
    report = str(info.value)
    assert report.count("error[") == MAX_ERRORS
    assert f"... and {120 - MAX_ERRORS} more not shown" in report
    assert report.endswith("120 errors, 0 warnings")


def test_decide_rejects_an_unknown_engine():
    from edgerules.lang.policy import build_policy
    from edgerules.lang.source import Source
    policy = build_policy([Source("t.rules", "provider p { format echo }\n")])
    with pytest.raises(ValueError, match="engine must be"):
        policy.decide({"model": "p/m"}, engine="interpretd")
