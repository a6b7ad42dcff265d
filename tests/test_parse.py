"""parse.py: text -> AST, literals, precedence, locations, and syntax errors with their positions."""
from __future__ import annotations

import logging

import pytest
from lark import Lark
from lark import logger as lark_logger

from edgerules.lang import ast
from edgerules.lang.errors import PolicyError
from edgerules.lang.build import parse_duration, parse_number, unquote
from edgerules.lang.parse import grammar_text, parse_source
from edgerules.lang.policy import build_policy
from edgerules.lang.source import Location, Source


def parse(text: str, name: str = "t.rules") -> ast.Program:
    program, diagnostics = parse_source(Source(name, text))
    assert diagnostics == [], diagnostics
    return program


def when(expr: str) -> ast.Expr:
    return parse(f"rule r {{ when {expr} tag \"t\" }}").rules[0].when


def syntax_error(text: str, name: str = "t.rules"):
    program, diagnostics = parse_source(Source(name, text))
    assert program is None
    assert len(diagnostics) == 1
    return diagnostics[0]


# ---- the grammar ----------------------------------------------------------------------------

def test_grammar_builds_without_conflicts():
    """A split nested in a list takes one `by` value, so a comma there always starts the next
    member and the grammar has no LALR conflict at all."""
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler, level = Keep(), lark_logger.level
    lark_logger.addHandler(handler)
    lark_logger.setLevel(logging.DEBUG)
    try:
        Lark(grammar_text(), parser="lalr", lexer="contextual", debug=True,
             propagate_positions=True, maybe_placeholders=True)
    finally:
        lark_logger.removeHandler(handler)
        lark_logger.setLevel(level)
    conflicts = [r for r in records if "conflict" in r.lower()]
    assert conflicts == []


def test_a_sticky_split_inside_a_list_takes_one_value():
    t = parse("rule r { route fallback [split [50% a/x, 50% b/y] by key, c/z] }").rules[0].actions[0].target
    split, last = t.members
    assert [f.name for f in split.by] == ["key"]
    assert (last.provider, last.model) == ("c", "z")


# ---- files, comments, whitespace -------------------------------------------------------------

def test_statements_need_no_terminator_and_whitespace_is_insignificant():
    one_line = parse('provider demo { format echo } rule a { when model == "x" route demo } '
                     'key k { sha256 "' + "a" * 64 + '" }')
    spread = parse('provider\ndemo\n{\nformat\necho\n}\nrule\na\n{\nwhen\nmodel\n==\n"x"\nroute\ndemo\n}\n'
                   'key\nk\n{\nsha256\n"' + "a" * 64 + '"\n}')
    assert [p.name for p in one_line.providers] == [p.name for p in spread.providers] == ["demo"]
    assert [r.name for r in one_line.rules] == [r.name for r in spread.rules] == ["a"]
    assert [k.name for k in one_line.keys] == [k.name for k in spread.keys] == ["k"]


def test_comments_run_to_the_end_of_the_line_but_not_inside_strings():
    program = parse('# heading\nrule r { # after the brace\n  when model == "a#b" # trailing\n'
                    '  deny 403 "no # comment" }\n# last line without newline')
    rule = program.rules[0]
    assert rule.when.right.value == "a#b"
    assert rule.actions[0].message == "no # comment"


def test_empty_and_comment_only_files_parse_to_empty_programs():
    for text in ("", "   \n\t\n", "# nothing here\n# at all"):
        program = parse(text)
        assert program.providers == program.keys == program.rules == ()


def test_identifiers_take_letters_digits_underscores_and_dashes():
    program = parse("provider my-provider_2 { format echo }\nrule _Rule-9 { route my-provider_2/m }")
    assert program.providers[0].name == "my-provider_2"
    assert program.rules[0].name == "_Rule-9"
    assert program.rules[0].actions[0].target.provider == "my-provider_2"


def test_top_level_statements_keep_their_order_across_kinds():
    program = parse("rule a { deny 403 } provider p { format echo } rule b { deny 403 } key k { secret \"s\" }")
    assert [r.name for r in program.rules] == ["a", "b"]
    merged = program.merge(parse("rule c { deny 403 }"))
    assert [r.name for r in merged.rules] == ["a", "b", "c"]


# ---- literals -------------------------------------------------------------------------------

@pytest.mark.parametrize("written, value", [
    (r'"plain"', "plain"),
    (r'"say \"hi\""', 'say "hi"'),
    (r'"back\\slash"', "back\\slash"),
    (r'"two\nlines"', "two\nlines"),
    (r'"a\tb"', "a\tb"),
    (r'"\d+"', "\\d+"),           # unknown escapes are kept as written
    (r'"\\d+"', "\\d+"),          # ... so both spellings reach the regex engine alike
    (r'"\q\."', "\\q\\."),
    (r'""', ""),
    ('"é ✓"', "é ✓"),
])
def test_string_escapes(written, value):
    assert unquote(written) == value
    assert when(f"model == {written}").right.value == value


@pytest.mark.parametrize("written, value", [
    ("100_000", 100_000), ("0", 0), ("-1", -1), ("2.50", 2.5), ("1_000.5", 1000.5), ("007", 7),
])
def test_numbers(written, value):
    assert parse_number(written) == value
    assert type(parse_number(written)) is type(value)


@pytest.mark.parametrize("written, seconds", [
    ("250ms", 0.25), ("5s", 5.0), ("1m", 60.0), ("1h", 3600.0), ("1d", 86400.0),
    ("1_000ms", 1.0), ("1.5m", 90.0), ("0s", 0.0),
])
def test_durations(written, seconds):
    assert parse_duration(written) == pytest.approx(seconds)
    lit = when(f"{written} == 1s").left
    assert (lit.type, lit.value) == ("duration", pytest.approx(seconds))


def test_booleans_lists_and_trailing_commas():
    expr = when('model in ["a", "b",]')
    assert [i.value for i in expr.right.items] == ["a", "b"]
    assert when("model in []").right.items == ()
    assert when("stream == true").right.value is True
    assert when("stream != false").right.value is False


# ---- expressions: precedence and shapes -----------------------------------------------------

def test_or_is_looser_than_and():
    expr = when('model == "a" or model == "b" and stream')
    assert isinstance(expr, ast.Or)
    assert isinstance(expr.operands[1], ast.And)


def test_and_is_looser_than_not_and_not_is_looser_than_comparison():
    expr = when('not model == "a" and stream')
    assert isinstance(expr, ast.And)
    assert isinstance(expr.operands[0], ast.Not)
    assert isinstance(expr.operands[0].operand, ast.Compare)


def test_parentheses_override_precedence():
    expr = when('(model == "a" or model == "b") and stream')
    assert isinstance(expr, ast.And)
    assert isinstance(expr.operands[0], ast.Or)


def test_chains_of_and_or_are_flattened():
    assert len(when("stream and stream and stream and stream").operands) == 4
    assert len(when("stream or stream or stream").operands) == 3
    nested = when("not not stream")
    assert isinstance(nested, ast.Not) and isinstance(nested.operand, ast.Not)


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">=", "in", "not in", "matches",
                                "contains", "starts_with", "ends_with"])
def test_every_comparison_operator(op):
    right = {"in": '["a"]', "not in": '["a"]'}.get(op, '"a"')
    expr = when(f"model {op} {right}")
    assert isinstance(expr, ast.Compare)
    assert expr.op == op


def test_field_forms():
    assert when('header("X-Plan") == "free"').left == ast.Field(
        "header", "X-Plan", "call", Location("t.rules", 1, 15, 31))
    meta = when('metadata.region == "eu"').left
    assert (meta.name, meta.arg, meta.form, meta.text()) == ("metadata", "region", "dotted", "metadata.region")
    plain = when("key == \"k\"").left
    assert (plain.name, plain.arg, plain.form) == ("key", None, "plain")


def test_locations_point_at_names_and_operators():
    program = parse('provider demo { format echo }\n\nrule first {\n    when hour   >= 8\n    route demo\n}\n')
    rule = program.rules[0]
    assert rule.loc == Location("t.rules", 3, 6, 11)
    assert rule.when.loc == Location("t.rules", 4, 17, 19)
    assert rule.when.left.loc == Location("t.rules", 4, 10, 14)
    assert program.providers[0].loc == Location("t.rules", 1, 10, 14)


# ---- providers, keys, actions, targets -------------------------------------------------------

def test_provider_settings():
    program = parse('provider p {\n url env("U")\n api_key "k"\n format anthropic\n timeout 30s\n'
                    ' cooldown 10s after 3 failures\n price gpt-4o input 2.50 output 10\n'
                    ' price "o1:2024" input 15 output 60\n}')
    settings = {s.name: s.args for s in program.providers[0].settings if s.name != "price"}
    assert settings["url"][0].kind == "env" and settings["url"][0].text == "U"
    assert settings["api_key"][0].kind == "string" and settings["api_key"][0].text == "k"
    assert settings["format"] == ("anthropic",)
    assert settings["timeout"] == (30.0,)
    assert settings["cooldown"][:2] == (10.0, 3)
    prices = [s.args for s in program.providers[0].settings if s.name == "price"]
    assert prices == [("gpt-4o", 2.5, 10), ("o1:2024", 15, 60)]


def test_key_settings():
    program = parse('key a { secret env("S") }\nkey b { sha256 "ABC" }')
    assert program.keys[0].settings[0].args[0].kind == "env"
    assert program.keys[1].settings[0].args == ("ABC",)


def test_actions():
    rule = parse('rule r {\n'
                 ' deny 403\n deny 451 "gone"\n'
                 ' limit requests 20 per 1m by key, user else route demo/echo\n'
                 ' limit cost 5.00 per 1d\n'
                 ' cache ttl 1h by model\n cache off\n'
                 ' retry 3 jitter max 2s on 429, 5xx, timeout, connect backoff linear 50ms\n retry 1\n'
                 ' timeout 20s\n deadline 1m\n tag "free"\n log full\n route demo\n}').rules[0]
    deny1, deny2, lim, cost, cache, off, retry, retry1, timeout, deadline, tag, log, route = rule.actions
    assert (deny1.status, deny1.message) == (403, None)
    assert (deny2.status, deny2.message) == (451, "gone")
    assert (lim.kind, lim.amount, lim.window) == ("requests", 20, 60.0)
    assert [f.name for f in lim.by] == ["key", "user"]
    assert lim.else_route == ast.TargetRef("demo", "echo", lim.else_route.loc)
    assert (cost.kind, cost.amount, cost.window, cost.by, cost.else_route) == ("cost", 5.0, 86400.0, (), None)
    assert (cache.ttl, [f.name for f in cache.by]) == (3600.0, ["model"])
    assert (off.ttl, off.by) == (None, ())
    assert (retry.attempts, retry.backoff, retry.delay, retry.max_delay, retry.jitter) == (3, "linear", 0.05, 2.0, True)
    assert [c.text for c in retry.on] == ["429", "5xx", "timeout", "connect"]
    assert (retry1.backoff, retry1.delay, retry1.max_delay, retry1.jitter, retry1.on) == (None, None, None, False, None)
    assert (timeout.seconds, deadline.seconds, tag.label, log.level) == (20.0, 60.0, "free", "full")
    assert route.target.provider == "demo" and route.target.model is None


def test_targets_of_every_shape():
    def target(text):
        return parse(f"rule r {{ route {text} }}").rules[0].actions[0].target

    t = target("openai/gpt-4o-mini")
    assert (t.provider, t.model) == ("openai", "gpt-4o-mini")
    t = target('"local/llama3:8b"')
    assert (t.provider, t.model) == ("local", "llama3:8b")
    t = target('"local"')
    assert (t.provider, t.model) == ("local", None)
    t = target("demo/m.1")
    assert t.model == "m.1"
    t = target("fallback [a/x, b, c/y,]")
    assert isinstance(t, ast.FallbackT) and [m.provider for m in t.members] == ["a", "b", "c"]
    t = target("fastest [a/x, b/y]")
    assert isinstance(t, ast.FastestT) and len(t.members) == 2
    t = target("split [90% fallback [a/x, b/y], 10% c/z] by key, user")
    assert isinstance(t, ast.SplitT) and t.weights == (90, 10)
    assert isinstance(t.members[0], ast.FallbackT)
    assert [f.name for f in t.by] == ["key", "user"]


def test_keywords_are_names_where_no_keyword_fits():
    """The contextual lexer: `key` is a field in an expression, `input` a model in a price."""
    program = parse('provider p { format echo price input input 1 output 2 }\n'
                    'rule r { when key == "k" route p/route }')
    assert program.providers[0].settings[1].args[0] == "input"
    assert program.rules[0].when.left.name == "key"
    assert program.rules[0].actions[0].target.model == "route"


# ---- syntax errors --------------------------------------------------------------------------

def test_syntax_error_unexpected_token_with_keyword_hint():
    d = syntax_error('provider demo { format echo }\nrule r {\n    wen model == "x"\n    route demo\n}\n')
    assert (d.file, d.line, d.column, d.code) == ("t.rules", 3, 5, "syntax")
    assert d.message == ("unexpected name 'wen', expected one of 'cache', 'deadline', 'deny', 'hide', "
                         "'limit', 'log', 'retry', 'route', ...")
    assert d.hint == "did you mean 'when'?"
    assert d.location.end_column == 8


def test_syntax_error_misspelt_action_lists_only_what_can_follow():
    d = syntax_error('rule r {\n    when model == "x"\n    rout demo\n}\n')
    assert (d.line, d.column) == (3, 5)
    assert d.message == ("unexpected name 'rout', expected one of 'and', 'cache', 'deadline', 'deny', "
                         "'hide', 'limit', 'log', 'or', ...")
    assert d.hint == "did you mean 'route'?"


def test_syntax_error_misspelt_provider_setting():
    d = syntax_error("provider p {\n    formt echo\n}\n")
    assert (d.line, d.column) == (2, 5)
    assert d.message == ("unexpected name 'formt', expected one of 'access_key', 'api_key', 'api_version', "
                         "'cooldown', 'deployment', 'format', 'headers', 'price', ...")
    assert d.hint == "did you mean 'format'?"


def test_syntax_error_misspelt_retry_option():
    d = syntax_error("rule r {\n    retry 2 backof constant 1s\n}\n")
    assert (d.line, d.column, d.hint) == (2, 13, "did you mean 'backoff'?")


def test_syntax_error_unterminated_string():
    d = syntax_error('rule r {\n    when model == "x\n    route demo\n}\n')
    assert (d.file, d.line, d.column, d.code, d.message) == ("t.rules", 2, 19, "syntax", "unterminated string")


def test_syntax_error_unterminated_string_at_end_of_file():
    d = syntax_error('rule r { deny 403 "oops')
    assert (d.line, d.column, d.message) == (1, 19, "unterminated string")


def test_syntax_error_unexpected_end_of_file():
    d = syntax_error('rule r {\n    when model == "x"\n    route demo\n\n\n')
    assert (d.line, d.column, d.code) == (3, 15, "syntax")
    assert d.message.startswith("unexpected end of file, expected one of '/', 'cache'")


def test_syntax_error_end_of_file_in_an_expression():
    d = syntax_error("rule r {\n    when model ==\n")
    assert (d.line, d.column) == (2, 18)
    assert d.message == ("unexpected end of file, expected one of '(', '[', 'false', 'true', "
                         "a duration such as 30s, a name, a number, a string")


def test_syntax_error_bad_character():
    d = syntax_error('rule r {\n    when model == "x" @ true\n    route demo\n}\n')
    assert (d.line, d.column, d.code, d.message) == (2, 23, "syntax", "unexpected character '@'")
    d = syntax_error('rule r { when model = "x" route demo }')
    assert (d.line, d.column, d.message) == (1, 21, "unexpected character '='")


def test_syntax_error_missing_name_and_wrong_statement():
    d = syntax_error("rule {\n  route demo\n}")
    assert (d.line, d.column, d.message) == (1, 6, "unexpected '{', expected a name")
    d = syntax_error("route demo")
    assert (d.line, d.column) == (1, 1)
    assert d.message == "unexpected 'route', expected one of 'api', 'key', 'mcp', 'provider', 'retry', 'rule', the end of the file"


def test_syntax_error_split_member_without_percent():
    d = syntax_error("rule r { route split [80 openai/a, 20% b] }")
    assert (d.column, d.message) == (26, "unexpected name 'openai', expected '%'")


def test_syntax_error_too_large_number():
    d = syntax_error("rule r {\n    when temperature < " + "9" * 400 + ".5\n    deny 403\n}")
    assert (d.line, d.column, d.code, d.message) == (2, 24, "bad-number", "number is too large")
    d = syntax_error("rule r { timeout 1" + "0" * 310 + "s deny 403 }")
    assert (d.column, d.code) == (18, "bad-number")


def test_leading_zeros_do_not_count_toward_the_digit_limit():
    expr = when("hour == " + "0" * 5000 + "7")
    assert expr.right.value == 7


def test_syntax_errors_of_several_files_are_all_reported_in_file_order():
    with pytest.raises(PolicyError) as info:
        build_policy([Source("b.rules", "rule r { deny 403 @ }"), Source("a.rules", "rule {")], {})
    diags = info.value.diagnostics
    assert [(d.file, d.line, d.column) for d in diags] == [("a.rules", 1, 6), ("b.rules", 1, 19)]
    assert str(info.value).endswith("2 errors, 0 warnings")


def test_syntax_error_renders_with_line_and_caret():
    with pytest.raises(PolicyError) as info:
        build_policy([Source("rules/x.rules", 'rule r {\n    wen model == "x"\n}\n')], {})
    assert str(info.value) == (
        "rules/x.rules:2:5: error[syntax]: unexpected name 'wen', expected one of 'cache', 'deadline', "
        "'deny', 'hide', 'limit', 'log', 'retry', 'route', ...\n"
        '  2 |     wen model == "x"\n'
        "    |     ^^^\n"
        "  hint: did you mean 'when'?\n"
        "1 error, 0 warnings")
