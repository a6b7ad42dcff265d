"""`*.test.rules` text -> PolicyTest values: the grammar (grammar/tests.lark), requests, expectations."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

from lark import Lark, Token, Tree, v_args
from lark.exceptions import UnexpectedInput
from lark.visitors import Transformer

from ..lang import ast
from ..lang.build import AstBuilder, parse_duration, parse_number, unquote
from ..lang.errors import Diagnostic
from ..lang.parse import _syntax_diagnostic
from ..lang.schema import METADATA_HEADER
from ..lang.source import Location, Source

GRAMMAR_NAME = "tests.lark"
# Without `time`, a test is decided at this instant (a Monday, 12:00 UTC), so that a test of a
# policy reading `hour` or `weekday` gives the same answer whenever it runs.
DEFAULT_TIME = "2026-01-05T12:00:00Z"
_PREFIX = "edgerules__"


@dataclass(frozen=True, slots=True)
class TestRequest:
    body: dict
    headers: dict
    key: str
    ip: str
    path: str
    now: float
    tool: str | None = None         # "SERVER__TOOL": a tool call, decided by the tool rules
    args: dict | None = None        # the tool call's arguments
    tool_loc: Location | None = None
    items: tuple = ()               # (item name, Location) of each item written, in order


@dataclass(frozen=True, slots=True)
class Expectation:
    kind: str              # deny route error matched tag no-tag no-cache limit cache-ttl cache-off
                           # retry timeout deadline log allow hide
    value: object          # status | ast target | [names] | label | rule | seconds | attempts | level
    text: str              # the expectation as written, after `expect`
    loc: Location          # the `expect` keyword's line
    names: tuple = ()      # (name, Location) of each rule named, for did-you-mean


@dataclass(frozen=True, slots=True)
class PolicyTest:
    name: str
    request: TestRequest
    expectations: tuple[Expectation, ...]
    loc: Location
    problems: tuple[Diagnostic, ...] = ()   # found while reading the request


def grammar_dir():
    return resources.files("edgerules.grammar")


@functools.cache
def build_parser() -> Lark:
    text = grammar_dir().joinpath(GRAMMAR_NAME).read_text(encoding="utf-8")
    return Lark(text, parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=True, import_paths=[str(grammar_dir())])


def parse_tests(source: Source) -> tuple[list[PolicyTest], list[Diagnostic]]:
    """The tests of one file, or [] and the syntax error."""
    parser = build_parser()
    try:
        tree = parser.parse(source.text)
    except UnexpectedInput as exc:
        return [], [_syntax_diagnostic(exc, source, parser)]
    tests = _TestBuilder(source).transform(tree)
    problems = [p for t in tests for p in t.problems]
    return tests, problems


def _unprefix(tree: Tree) -> Tree:
    """An imported target subtree with the rule names of edgerules.lark, for AstBuilder."""
    for sub in tree.iter_subtrees():
        if isinstance(sub.data, str) and sub.data.startswith(_PREFIX):
            sub.data = sub.data[len(_PREFIX):]
        elif isinstance(sub.data, Token) and sub.data.value.startswith(_PREFIX):
            sub.data = Token(sub.data.type, sub.data.value[len(_PREFIX):])
    return tree


def iso_time(text: str) -> float:
    """An ISO 8601 instant as Unix time; without an offset it is UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


class _TestBuilder(Transformer):
    def __init__(self, source: Source):
        super().__init__()
        self.source = source
        self.file = source.name

    def _loc(self, meta) -> Location:
        end = meta.end_column if meta.end_line == meta.line else meta.column + 1
        return Location(self.file, meta.line, meta.column, end)

    def _tok(self, token: Token) -> Location:
        return Location(self.file, token.line, token.column, token.column + len(token))

    def _text(self, meta) -> str:
        return " ".join(self.source.text[meta.start_pos:meta.end_pos].split())

    # tests
    def start(self, items):
        return list(items)

    @v_args(meta=True)
    def test(self, meta, items):
        name, request, *expects = items
        request, problems = request if request is not None else self._request([])
        return PolicyTest(str(name), request, tuple(expects), self._tok(name), tuple(problems))

    def request(self, items):
        return self._request(items)

    def _request(self, items):
        body, fields, headers, metadata = {}, {}, {}, {}
        problems = []
        for name, value, loc in items:
            if name == "tool":
                value, loc = value
            if name == "body":
                body = dict(value)
            elif name == "header":
                headers[value[0].lower()] = value[1]
            elif name == "metadata":
                metadata[value[0]] = value[1]
            elif name == "input_tokens":
                # The estimate is (characters + 3) // 4 + 3 a message: one message of this many
                # characters is estimated at exactly the number written.
                fields["messages"] = [{"role": "user", "content": "x" * max(0, int(value) - 3) * 4}]
            elif name == "time":
                try:
                    fields["now"] = iso_time(value)
                except ValueError:
                    problems.append(Diagnostic("bad-time", f"'{value}' is not an ISO 8601 time", loc,
                                               hint='write it as "2026-11-30T09:00:00Z"'))
            else:
                fields[name] = value
        for name in ("model", "stream", "temperature", "max_tokens", "user", "messages"):
            if name in fields:
                body[name] = fields[name]
        if metadata:
            headers[METADATA_HEADER] = json.dumps(metadata)
        request = TestRequest(body, headers, fields.get("key", ""), fields.get("ip", "127.0.0.1"),
                              fields.get("path", "/v1/chat/completions"),
                              fields.get("now", iso_time(DEFAULT_TIME)), fields.get("tool"),
                              fields.get("args"), next((v[1] for n, v, _ in items if n == "tool"), None),
                              tuple((n, loc) for n, _, loc in items))
        return request, problems

    def _item(name, convert):
        @v_args(meta=True)
        def build(self, meta, items):
            return (name, convert(*items), self._loc(meta))
        return build

    model_item = _item("model", unquote)
    stream_item = _item("stream", lambda b: b)
    temperature_item = _item("temperature", parse_number)
    max_tokens_item = _item("max_tokens", parse_number)
    user_item = _item("user", unquote)
    key_item = _item("key", lambda t: unquote(t) if t.type == "STRING" else str(t))
    ip_item = _item("ip", unquote)
    path_item = _item("path", unquote)
    header_item = _item("header", lambda n, v: (unquote(n), unquote(v)))
    metadata_item = _item("metadata", lambda n, v: (unquote(n) if n.type == "STRING" else str(n), unquote(v)))
    time_item = _item("time", unquote)
    input_tokens_item = _item("input_tokens", parse_number)
    body_item = _item("body", lambda o: o)
    @v_args(meta=True)
    def tool_item(self, meta, items):
        # The value carries the name's own position, for a diagnostic about the server.
        return ("tool", (unquote(items[0]), self._tok(items[0])), self._loc(meta))

    args_item = _item("args", lambda o: o)
    del _item

    def boolean(self, items):
        return str(items[0]) == "true"

    # JSON
    def json_object(self, items):
        return dict(items)

    def json_pair(self, items):
        return (json.loads(items[0]), items[1])

    def json_array(self, items):
        return list(items)

    def json_string(self, items):
        return json.loads(items[0])

    def json_number(self, items):
        return parse_number(items[0])

    def json_true(self, items):
        return True

    def json_false(self, items):
        return False

    def json_null(self, items):
        return None

    # expectations
    @v_args(meta=True)
    def expect(self, meta, items):
        kind, value, names, text_meta = items[0]
        loc = self._loc(meta)
        return Expectation(kind, value, self._text(text_meta), loc, names)

    def _expectation(kind, convert=lambda *items: items[0] if items else None):
        @v_args(meta=True)
        def build(self, meta, items):
            return (kind, convert(*items), (), meta)
        return build

    deny_e = _expectation("deny", lambda status: parse_number(status) if status is not None else None)
    error_e = _expectation("error", parse_number)
    tag_e = _expectation("tag", unquote)
    no_tag_e = _expectation("no-tag", unquote)
    no_cache_e = _expectation("no-cache")
    cache_ttl_e = _expectation("cache-ttl", parse_duration)
    cache_off_e = _expectation("cache-off")
    cache_semantic_e = _expectation("cache-semantic", parse_number)
    retry_e = _expectation("retry", parse_number)
    timeout_e = _expectation("timeout", parse_duration)
    deadline_e = _expectation("deadline", parse_duration)
    log_e = _expectation("log", str)
    allow_e = _expectation("allow")
    hide_e = _expectation("hide")
    del _expectation

    @v_args(meta=True)
    def route_e(self, meta, items):
        target = AstBuilder(self.file).transform(_unprefix(items[0]))
        return ("route", target, (), meta)

    @v_args(meta=True)
    def matched_e(self, meta, items):
        names = tuple((str(t), self._tok(t)) for t in items if t is not None)
        return ("matched", [n for n, _ in names], names, meta)

    @v_args(meta=True)
    def limit_e(self, meta, items):
        return ("limit", str(items[0]), ((str(items[0]), self._tok(items[0])),), meta)
