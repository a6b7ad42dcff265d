"""Lark tree -> frozen AST with locations, and the decoders of literals (numbers, durations, strings).

Structural only: it builds nodes and never raises (validation is check.py's). It walks the tree
without recursion, so a 10,000-term condition builds like a short one.
"""
from __future__ import annotations

from lark import Token, v_args
from lark.visitors import Transformer_NonRecursive

from . import ast
from .source import Location

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


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
    if "\\" not in body:   # most strings: nothing to decode
        return body
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


class AstBuilder(Transformer_NonRecursive):
    """One method per grammar rule; each builds the node of its rule from its built children."""

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
        servers = tuple(i for i in items if isinstance(i, ast.ServerDecl))
        budgets = tuple(i for i in items if isinstance(i, ast.RetryBudget))
        return ast.Program(providers, keys, rules, servers, budgets)

    def mcp(self, items):
        name, *settings = items
        return ast.ServerDecl("mcp", str(name), tuple(settings), self._tok(name))

    def api(self, items):
        name, *settings = items
        return ast.ServerDecl("api", str(name), tuple(settings), self._tok(name))

    def provider(self, items):
        name, *settings = items
        return ast.ProviderDecl(str(name), tuple(settings), self._tok(name))

    def key(self, items):
        name, *settings = items
        return ast.KeyDecl(str(name), tuple(settings), self._tok(name))

    @v_args(meta=True)
    def rule(self, meta, items):
        name, for_tools, when, *actions = items
        return ast.Rule(str(name), when, tuple(actions), self._tok(name), for_tools is not None)

    def for_tools(self, items):
        return True

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
    headers_setting = _setting("headers")       # args: (name, name location, Value) per header
    api_version_setting = _setting("api_version")
    deployment_setting = _setting("deployment")
    region_setting = _setting("region")
    access_key_setting = _setting("access_key")
    secret_key_setting = _setting("secret_key")
    del _setting

    def header(self, items):
        name, value = items
        return (unquote(name), self._tok(name), value)

    @v_args(meta=True)
    def api_key_pool(self, meta, items):
        *members, pick = items
        pool = ast.KeyPool(tuple(members), str(pick) if pick is not None else None,
                           self._tok(pick) if pick is not None else None, self._loc(meta))
        return ast.Setting("api_key", (pool,), self._loc(meta))

    @v_args(meta=True)
    def pool_key(self, meta, items):
        value, name, *limits = items
        return ast.PoolKey(value, str(name) if name is not None else None,
                           self._tok(name) if name is not None else None, tuple(limits), self._loc(meta))

    @v_args(meta=True)
    def pool_limit(self, meta, items):
        kind, amount, window = items
        return ast.PoolLimit(kind, parse_number(amount), self._tok(amount), parse_duration(window),
                             self._tok(window), self._loc(meta))

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
    def builtin_setting(self, meta, items):
        return ast.Setting("builtin", (str(items[0]),), self._tok(items[0]))

    @v_args(meta=True)
    def openapi_setting(self, meta, items):
        return ast.Setting("openapi", (unquote(items[0]),), self._tok(items[0]))

    @v_args(meta=True)
    def tools_setting(self, meta, items):
        globs = tuple((unquote(t), self._tok(t)) for t in items if t is not None)
        return ast.Setting("tools", globs, self._loc(meta))

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
        if status is None:
            return ast.Deny(None, msg, self._loc(meta), self._loc(meta))
        return ast.Deny(parse_number(status), msg, self._loc(meta), self._tok(status))

    @v_args(meta=True)
    def hide(self, meta, items):
        return ast.Hide(self._loc(meta))

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
        ttl, by, shared = items
        return ast.Cache(parse_duration(ttl), by or (), self._loc(meta), shared=shared is not None)

    @v_args(meta=True)
    def cache_semantic(self, meta, items):
        threshold, ttl, provider, model, by, shared = items
        using_loc = self._tok(provider)
        semantic = ast.SemanticCache(parse_number(threshold), self._tok(threshold), str(provider), model,
                                     using_loc)
        return ast.Cache(parse_duration(ttl), by or (), self._loc(meta), shared=shared is not None,
                         semantic=semantic)

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
    def hedge(self, meta, items):
        *members, after = items
        if after.startswith("p"):   # PERCENTILE (tests.lark imports it under another name)
            return ast.HedgeT(tuple(members), None, float(after[1:]), self._tok(after), self._loc(meta))
        return ast.HedgeT(tuple(members), parse_duration(after), None, self._tok(after), self._loc(meta))

    @v_args(meta=True)
    def retry_budget(self, meta, items):
        percent, floor, unit = items
        return ast.RetryBudget(parse_number(percent), self._tok(percent),
                               parse_number(floor) if floor is not None else None,
                               self._tok(floor) if floor is not None else None,
                               str(unit) if unit is not None else None, self._loc(meta))

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
        # A parenthesised `or` first in the chain joins it, as a left-folded chain would.
        first, *rest = items
        ops = first.operands if isinstance(first, ast.Or) else (first,)
        return ast.Or(ops + tuple(rest), self._loc(meta))

    @v_args(meta=True)
    def and_(self, meta, items):
        first, *rest = items
        ops = first.operands if isinstance(first, ast.And) else (first,)
        return ast.And(ops + tuple(rest), self._loc(meta))

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
        name, *path = items
        return ast.Field(str(name), ".".join(map(str, path)), "dotted", self._loc(meta))

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
