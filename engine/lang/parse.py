"""Text -> Lark tree -> AST. Reports syntax errors only; every other check is check.py's."""
from __future__ import annotations

import difflib
import functools
import math
from importlib import resources

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from . import ast
from .errors import Diagnostic
from .source import Location, Source

GRAMMAR_NAME = "edgerules.lark"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
_TERMINAL_WORDS = {
    "NAME": "a name", "MODEL": "a model name", "STRING": "a string", "NUMBER": "a number",
    "DURATION": "a duration such as 30s", "STATUS_CLASS": "a status class such as 5xx",
    "COMP_OP": "a comparison", "$END": "the end of the file",
}


def grammar_text() -> str:
    """The grammar file shipped as the `edgerules.grammar` package (grammar/ in a checkout)."""
    return resources.files("edgerules.grammar").joinpath(GRAMMAR_NAME).read_text(encoding="utf-8")


@functools.cache
def build_parser() -> Lark:
    return Lark(grammar_text(), parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=True)


def parse_source(source: Source) -> tuple[ast.Program | None, list[Diagnostic]]:
    """Parse one file. Returns the program, or None and the syntax error."""
    parser = build_parser()
    try:
        tree = parser.parse(source.text)
    except UnexpectedInput as exc:
        return None, [_syntax_diagnostic(exc, source, parser)]
    oversized = _oversized_numbers(tree, source.name)
    if oversized:
        return None, oversized
    return _ToAst(source.name).transform(tree), []


def _oversized_numbers(tree, file: str) -> list[Diagnostic]:
    """Numbers too large for a float: they would become inf (or exceed int()'s digit limit)."""
    out = []
    for token in tree.scan_values(lambda v: isinstance(v, Token) and v.type in ("NUMBER", "DURATION")):
        value = parse_duration(token) if token.type == "DURATION" else float(token.replace("_", ""))
        if not math.isfinite(value):
            end = token.end_column if token.end_line == token.line else token.column + 1
            out.append(Diagnostic("bad-number", "number is too large",
                                  Location(file, token.line, token.column, end)))
    return out


def parse_duration(text: str) -> float:
    text = text.replace("_", "")
    unit = "ms" if text.endswith("ms") else text[-1]
    return float(text[: -len(unit)]) * _UNITS[unit]


def parse_number(text: str) -> int | float:
    text = text.replace("_", "")
    if "." in text:
        return float(text)
    # Leading zeros stripped: int() refuses strings of more than 4300 digits, zeros included.
    sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
    return int(sign + (digits.lstrip("0") or "0"))


def unquote(text: str) -> str:
    """Decode a string literal; an unknown escape is kept as written, so regexes read naturally."""
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


# ---- syntax errors --------------------------------------------------------------------------

def _syntax_diagnostic(exc: UnexpectedInput, source: Source, parser: Lark) -> Diagnostic:
    line, column = max(exc.line, 1) if exc.line != -1 else 1, max(exc.column, 1) if exc.column != -1 else 1
    width, hint = 1, None
    if isinstance(exc, UnexpectedCharacters):
        char = source.text[exc.pos_in_stream] if exc.pos_in_stream < len(source.text) else ""
        if char == '"':
            message = "unterminated string"
        else:
            message = f"unexpected character {char!r}"
    elif isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        token = exc.token
        width = max(1, len(str(token)))
        expected = _acceptable(exc)
        message = f"unexpected {_describe_token(token)}, expected {_describe_expected(expected, parser)}"
        hint = _suggest_keyword(str(token), expected, parser)
    else:
        if isinstance(exc, UnexpectedEOF) or getattr(exc, "token", None) is not None:
            line, column = _end_position(source.text)
        expected = _describe_expected(_acceptable(exc), parser)
        message = f"unexpected end of file, expected {expected}"
    loc = Location(source.name, line, column, column + width)
    return Diagnostic("syntax", message, loc, hint=hint)


def _acceptable(exc: UnexpectedInput) -> set[str]:
    """What the parser could take here. LALR's `expected` also lists terminals that only a
    default reduction would reject (such as ')' after a complete `when` condition); `accepts`
    replays the parser on each one to keep only the real ones."""
    if isinstance(exc, UnexpectedToken) and exc.interactive_parser is not None:
        return set(exc.accepts)
    return set(getattr(exc, "expected", ()) or ())


def _end_position(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    column = len(stripped) - (stripped.rfind("\n") + 1) + 1
    return line, column


def _describe_token(token: Token) -> str:
    if token.type in ("NAME", "MODEL"):
        return f"name '{token}'"
    if token.type == "STRING":
        return f"string {token}"
    return f"'{token}'"


def _terminal_text(name: str, parser: Lark) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        pattern = parser.get_terminal(name).pattern
    except KeyError:
        return name.lower()
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name.lower()


def _describe_expected(expected, parser: Lark) -> str:
    words = sorted({_terminal_text(name, parser) for name in expected})
    if not words:
        return "something else"
    if len(words) == 1:
        return words[0]
    if len(words) > 8:
        return "one of " + ", ".join(words[:8]) + ", ..."
    return "one of " + ", ".join(words)


def _suggest_keyword(text: str, expected, parser: Lark) -> str | None:
    keywords = []
    for name in expected:
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            continue
        if isinstance(pattern, PatternStr) and pattern.value.isalpha():
            keywords.append(pattern.value)
    close = difflib.get_close_matches(text, keywords, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


# ---- tree -> AST ----------------------------------------------------------------------------

class _ToAst(Transformer):
    """Structural only: it builds nodes and never raises (validation is check.py's)."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _loc(self, meta) -> Location:
        end = meta.end_column if meta.end_line == meta.line else meta.column + 1
        return Location(self.file, meta.line, meta.column, end)

    def _tok(self, token: Token) -> Location:
        end = token.end_column if token.end_line == token.line else token.column + 1
        return Location(self.file, token.line, token.column, end)

    # statements
    def start(self, items):
        providers = tuple(i for i in items if isinstance(i, ast.ProviderDecl))
        keys = tuple(i for i in items if isinstance(i, ast.KeyDecl))
        rules = tuple(i for i in items if isinstance(i, ast.Rule))
        return ast.Program(providers, keys, rules)

    def provider(self, items):
        name, *settings = items
        return ast.ProviderDecl(str(name), tuple(settings), self._tok(name))

    def key(self, items):
        name, *settings = items
        return ast.KeyDecl(str(name), tuple(settings), self._tok(name))

    @v_args(meta=True)
    def rule(self, meta, items):
        name, when, *actions = items
        return ast.Rule(str(name), when, tuple(actions), self._tok(name))

    def when(self, items):
        return items[0]

    # settings
    def _setting(name):
        @v_args(meta=True)
        def build(self, meta, items):
            return ast.Setting(name, tuple(items), self._loc(meta))
        return build

    url_setting = _setting("url")
    api_key_setting = _setting("api_key")
    secret_setting = _setting("secret")
    del _setting

    @v_args(meta=True)
    def format_setting(self, meta, items):
        return ast.Setting("format", (str(items[0]),), self._tok(items[0]))

    @v_args(meta=True)
    def timeout_setting(self, meta, items):
        return ast.Setting("timeout", (parse_duration(items[0]),), self._tok(items[0]))

    @v_args(meta=True)
    def cooldown_setting(self, meta, items):
        duration, failures = items
        args = (parse_duration(duration), parse_number(failures), self._tok(failures))
        return ast.Setting("cooldown", args, self._loc(meta))

    @v_args(meta=True)
    def price_setting(self, meta, items):
        model, inp, out = items
        return ast.Setting("price", (model, parse_number(inp), parse_number(out)), self._loc(meta))

    @v_args(meta=True)
    def sha256_setting(self, meta, items):
        return ast.Setting("sha256", (unquote(items[0]),), self._tok(items[0]))

    def string_value(self, items):
        return ast.Value("string", unquote(items[0]), self._tok(items[0]))

    @v_args(meta=True)
    def env_value(self, meta, items):
        return ast.Value("env", unquote(items[0]), self._loc(meta))

    def model_name(self, items):
        token = items[0]
        return unquote(token) if token.type == "STRING" else str(token)

    # actions
    @v_args(meta=True)
    def deny(self, meta, items):
        status, message = items
        msg = unquote(message) if message is not None else None
        return ast.Deny(parse_number(status), msg, self._loc(meta), self._tok(status))

    @v_args(meta=True)
    def route(self, meta, items):
        return ast.Route(items[0], self._loc(meta))

    @v_args(meta=True)
    def limit(self, meta, items):
        kind, amount, window, by, else_route = items
        return ast.Limit(kind, parse_number(amount), self._tok(amount), parse_duration(window),
                         self._tok(window), by or (), else_route, self._loc(meta))

    def limit_kind(self, items):
        return str(items[0])

    def by(self, items):
        return tuple(items)

    def else_route(self, items):
        return items[0]

    @v_args(meta=True)
    def cache_ttl(self, meta, items):
        ttl, by = items
        return ast.Cache(parse_duration(ttl), by or (), self._loc(meta))

    @v_args(meta=True)
    def cache_off(self, meta, items):
        return ast.Cache(None, (), self._loc(meta))

    @v_args(meta=True)
    def retry(self, meta, items):
        count, *options = items
        opts, repeated = {}, []
        for name, value, loc in options:
            if name in opts:
                repeated.append((name, loc))
            opts[name] = value
        backoff = opts.get("backoff")
        return ast.Retry(parse_number(count), self._tok(count),
                         backoff[0] if backoff else None, backoff[1] if backoff else None,
                         opts.get("max"), "jitter" in opts, opts.get("on"), self._loc(meta),
                         tuple(repeated))

    @v_args(meta=True)
    def backoff(self, meta, items):
        return ("backoff", (str(items[0]), parse_duration(items[1])), self._loc(meta))

    def backoff_kind(self, items):
        return str(items[0])

    @v_args(meta=True)
    def retry_max(self, meta, items):
        return ("max", parse_duration(items[0]), self._loc(meta))

    @v_args(meta=True)
    def jitter(self, meta, items):
        return ("jitter", True, self._loc(meta))

    @v_args(meta=True)
    def retry_on(self, meta, items):
        return ("on", tuple(items), self._loc(meta))

    def retry_code(self, items):
        return ast.RetryCode(str(items[0]), self._tok(items[0]))

    @v_args(meta=True)
    def timeout(self, meta, items):
        return ast.Timeout(parse_duration(items[0]), self._loc(meta))

    @v_args(meta=True)
    def deadline(self, meta, items):
        return ast.Deadline(parse_duration(items[0]), self._loc(meta))

    @v_args(meta=True)
    def tag(self, meta, items):
        return ast.Tag(unquote(items[0]), self._loc(meta))

    @v_args(meta=True)
    def log(self, meta, items):
        return ast.Log(items[0], self._loc(meta))

    def log_level(self, items):
        return str(items[0])

    # targets
    @v_args(meta=True)
    def single(self, meta, items):
        provider, model = items
        return ast.TargetRef(str(provider), model, self._loc(meta))

    @v_args(meta=True)
    def quoted_target(self, meta, items):
        text = unquote(items[0])
        provider, sep, model = text.partition("/")
        return ast.TargetRef(provider, model if sep else None, self._loc(meta))

    @v_args(meta=True)
    def fallback(self, meta, items):
        return ast.FallbackT(tuple(items), self._loc(meta))

    @v_args(meta=True)
    def fastest(self, meta, items):
        return ast.FastestT(tuple(items), self._loc(meta))

    @v_args(meta=True)
    def split(self, meta, items):
        *members, by = items
        weights = tuple(weight for weight, _ in members)
        return ast.SplitT(weights, tuple(t for _, t in members), by or (), self._loc(meta))

    @v_args(meta=True)
    def nested_split(self, meta, items):
        *members, by = items
        weights = tuple(weight for weight, _ in members)
        return ast.SplitT(weights, tuple(t for _, t in members), (by,) if by is not None else (),
                          self._loc(meta))

    def split_member(self, items):
        return (parse_number(items[0]), items[1])

    # expressions
    @v_args(meta=True)
    def or_(self, meta, items):
        left, right = items
        ops = left.operands if isinstance(left, ast.Or) else (left,)
        return ast.Or(ops + (right,), self._loc(meta))

    @v_args(meta=True)
    def and_(self, meta, items):
        left, right = items
        ops = left.operands if isinstance(left, ast.And) else (left,)
        return ast.And(ops + (right,), self._loc(meta))

    @v_args(meta=True)
    def not_(self, meta, items):
        return ast.Not(items[0], self._loc(meta))

    @v_args(meta=True)
    def compare(self, meta, items):
        left, op, right = items
        return ast.Compare(str(op), left, right, self._tok(op))

    def _op(op):
        @v_args(meta=True)
        def build(self, meta, items):
            left, right = items
            return ast.Compare(op, left, right, self._loc(meta))
        return build

    in_ = _op("in")
    not_in = _op("not in")
    matches = _op("matches")
    contains = _op("contains")
    starts_with = _op("starts_with")
    ends_with = _op("ends_with")
    del _op

    def field(self, items):
        return ast.Field(str(items[0]), None, "plain", self._tok(items[0]))

    @v_args(meta=True)
    def call_field(self, meta, items):
        name, arg = items
        return ast.Field(str(name), unquote(arg), "call", self._loc(meta))

    @v_args(meta=True)
    def dotted_field(self, meta, items):
        name, arg = items
        return ast.Field(str(name), str(arg), "dotted", self._loc(meta))

    @v_args(meta=True)
    def list(self, meta, items):
        return ast.ListLit(tuple(i for i in items if i is not None), self._loc(meta))

    def string(self, items):
        return ast.Literal(unquote(items[0]), "string", self._tok(items[0]))

    def number(self, items):
        return ast.Literal(parse_number(items[0]), "number", self._tok(items[0]))

    def duration(self, items):
        return ast.Literal(parse_duration(items[0]), "duration", self._tok(items[0]))

    @v_args(meta=True)
    def true(self, meta, items):
        return ast.Literal(True, "bool", self._loc(meta))

    @v_args(meta=True)
    def false(self, meta, items):
        return ast.Literal(False, "bool", self._loc(meta))
