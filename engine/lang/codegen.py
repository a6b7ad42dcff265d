"""Checked policy -> Python source of one decision function, plus a map back to the rules.

A pure string writer: it never executes anything. Scalars are written as Python literals
(repr() of a str, int, float or bool is always a valid, inert literal); every other constant
(specs, targets, regexes, dispatch tables) is bound by name into the namespace the compiler
builds, listed in `Generated.constants`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import ast
from .check import CheckedAction, CheckedPolicy, CheckedRule
from .check.expressions import is_cidr_test
from .schema import DECIDE_ARGS, DECIDE_TOOL_ARGS, FIELDS, METADATA_HEADER, cidr_matcher, extractor, memo_search
from .source import Location

# Consecutive rules that test the same field with == or `in` are dispatched through a dict once
# there are at least this many of them. Measured: below about 8 such rules a chain of `if`
# tests is faster than a dict lookup plus a call; at 16 the dict wins by 7%, and it stays flat.
DISPATCH_MIN = 8
# A table with this many bucket functions is written by shape (_shaped_table): compile() of one
# function a rule was 0.6 s of a 10,000-rule load. Below it, one readable function a bucket.
SHAPES_MIN = 64

RUNTIME_HELPERS = ("_Decision", "_finish", "_estimate_tokens", "_count_messages",
                   "_parse_metadata", "_gmtime", "_tool_names", "_forces_tool", "_response_format",
                   "_body_path", "_body_typed")


@dataclass
class Generated:
    source: str
    constants: dict[str, object]
    line_map: dict[int, Location] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Dispatch:
    table: str
    params: list
    first: CheckedRule
    last: CheckedRule
    fields: set


@dataclass(frozen=True, slots=True)
class _IndexKey:
    field: tuple
    values: tuple
    rest: ast.Expr | None


def generate(policy: CheckedPolicy, version: str = "") -> Generated:
    return _Writer(policy).write(version)


def generate_tools(policy: CheckedPolicy, version: str = "") -> Generated:
    """decide_tool(server, tool, args, headers, key, ip, now) over the `for tools` rules."""
    return _Writer(policy, tools=True).write(version)


class _Writer:
    def __init__(self, policy: CheckedPolicy, tools: bool = False):
        self.policy = policy
        self.tools = tools
        self.rules = policy.tool_rules if tools else policy.rules
        self.lines: list[str] = []
        self.line_map: dict[int, Location] = {}
        self.constants: dict[str, object] = {}
        self._const_ids: dict[int, str] = {}
        self.locals: dict[tuple, str] = {}
        self.nullable: set[str] = set()
        self.tables = 0
        self.extracted: set = set()
        self._matchers: dict[str, object] = {}
        self._shape_args: dict[str, tuple] | None = None   # while a shape is written: text -> (parameter, value)
        self._rule_fields: dict[int, dict] = {}   # id(rule) -> {field key: Field}, in order of use
        self._index_keys: dict[int, _IndexKey | None] = {}

    # ---- output ---------------------------------------------------------------------------

    def emit(self, indent: int, text: str, loc: Location | None = None) -> None:
        self.lines.append("    " * indent + text)
        if loc is not None:
            self.line_map[len(self.lines)] = loc

    def const(self, value: object, prefix: str = "_K") -> str:
        name = self._const_ids.get(id(value))
        if name is None:
            name = f"{prefix}{len(self.constants)}"
            self.constants[name] = value
            self._const_ids[id(value)] = name
        return name if self._shape_args is None else self._param(name, value)

    def _param(self, text: str, value: object) -> str:
        """Inside a shared shape: the parameter that stands for VALUE (written TEXT: a constant's
        name or a literal), so bodies that differ only in those are one function."""
        args = self._shape_args
        if text not in args:
            args[text] = (f"_p{len(args)}", value)
        return args[text][0]

    def _name(self, rule: CheckedRule) -> str:
        return self._literal(rule.name)

    def _literal(self, value: object) -> str:
        """An action's value (a rule name, a deny, a tag, a timeout): a literal, or in a shape
        a parameter, so rules that differ only in their messages or tags share a shape."""
        return repr(value) if self._shape_args is None else self._param(repr(value), value)

    # ---- the whole function ---------------------------------------------------------------

    def write(self, version: str) -> Generated:
        rules = self._reachable(self.rules)
        self._collect_fields(rules)
        self.emit(0, f"# edgerules policy {version or '(unversioned)'}: generated code, do not edit.")
        self.emit(0, f"# Runtime helpers: {', '.join(RUNTIME_HELPERS)}; constants _K*, patterns _R*, dispatch _D*.")
        body: list[tuple] = []  # deferred: bucket functions must be defined before decide()
        for group in self._groups(rules):
            if isinstance(group, list):
                body.append(("dispatch", self._dispatch(group)))
            else:
                body.append(("rule", group))
        self.emit(0, "")
        if self.tools:
            self.emit(0, f"def decide_tool({', '.join(DECIDE_TOOL_ARGS)}):")
        else:
            self.emit(0, f"def decide({', '.join(DECIDE_ARGS)}):")
        self.emit(1, "d = _Decision()")
        self.emit(1, "m = d.matched = []")
        ended = False
        for kind, item in body:
            self._extract(item.fields if kind == "dispatch" else self._fields_of(item).keys())
            if kind == "rule":
                ended = self._rule(item, 1, "return d")
            else:
                table, params, first, last = item.table, item.params, item.first, item.last
                self.emit(1, f"# {_file(first.loc)}:{first.loc.line}-{last.loc.line}: rules "
                             f"'{first.name}' to '{last.name}' dispatched on one field")
                key_local = params[0]
                self.emit(1, f"b = {table}.get({key_local})")
                self.emit(1, f"if b is not None and b(d, m, {', '.join(params)}):")
                self.emit(2, "return d")
        if not ended:
            self.emit(1, "return d" if self.tools else 'return _finish(d, body.get("model") or "")')
        return Generated("\n".join(self.lines) + "\n", self.constants, self.line_map)

    @staticmethod
    def _reachable(rules) -> list[CheckedRule]:
        out = []
        for rule in rules:
            out.append(rule)
            if rule.when is None and any(a.terminal for a in rule.actions):
                break
        return out

    def _collect_fields(self, rules) -> None:
        seen: dict[tuple, ast.Field] = {}
        for rule in rules:
            for key, f in self._fields_of(rule).items():
                seen.setdefault(key, f)
        used = set()
        for key in sorted(seen, key=lambda k: (k[0], k[1] or "")):
            name, arg = key
            if name in ("header", "metadata", "body", "arg"):
                base = re.sub(r"[^A-Za-z0-9]", "_", arg.lower())[:40]
                local = f"{ {'header': 'h', 'metadata': 'md', 'body': 'b', 'arg': 'a'}[name] }_{base}"
                while local in used:
                    local += "_"
            else:
                local = name
            used.add(local)
            self.locals[key] = local
            if FIELDS[name].nullable:
                self.nullable.add(local)

    def _extract(self, keys) -> None:
        """Read each field just before the first rule that needs it: a walk that ends early
        never pays for the fields only later rules read (token estimates, metadata, the clock)."""
        for key in sorted(keys, key=lambda k: (k[0], k[1] or "")):
            if key in self.extracted:
                continue
            self.extracted.add(key)
            name = key[0]
            if name == "metadata" and "_meta" not in self.extracted:
                self.extracted.add("_meta")
                self.emit(1, f"_meta = _parse_metadata(headers.get({METADATA_HEADER!r}))")
            if name in ("hour", "weekday") and "_utc" not in self.extracted:
                self.extracted.add("_utc")
                self.emit(1, "_utc = _gmtime(now)")
            local, code = self.locals[key], extractor(*key).code
            if code != local:
                self.emit(1, f"{local} = {code}")

    # ---- grouping and dispatch ------------------------------------------------------------

    def _groups(self, rules):
        """Rules in order; runs of DISPATCH_MIN+ rules keyed on one field become lists."""
        out, run = [], []
        for rule in rules:
            key = self._index_key(rule)
            if run and (key is None or key.field != self._index_key(run[0]).field):
                out.extend([run] if len(run) >= DISPATCH_MIN else run)
                run = []
            if key is not None:
                run.append(rule)
            else:
                out.append(rule)
        out.extend([run] if len(run) >= DISPATCH_MIN else run)
        return out

    def _dispatch(self, run: list[CheckedRule]):
        self.tables += 1
        table = f"_D{self.tables}"
        field_key = self._index_key(run[0]).field
        params = [self.locals[field_key]]
        for rule in run:
            for key in self._fields_of(rule):
                if self.locals[key] not in params:
                    params.append(self.locals[key])
        buckets: dict[object, list[tuple[CheckedRule, ast.Expr | None]]] = {}
        for rule in run:
            key = self._index_key(rule)
            for value in key.values:
                bucket = buckets.setdefault(value, [])
                if not any(r is rule for r, _ in bucket):
                    bucket.append((rule, key.rest))
        if len({tuple(id(rule) for rule, _ in members) for members in buckets.values()}) >= SHAPES_MIN:
            self._shaped_table(table, params, buckets)
        else:
            entries = []
            shared: dict[tuple, str] = {}   # values whose rules are the same share one function
            for value, members in buckets.items():
                ident = tuple(id(rule) for rule, _ in members)
                fn = shared.get(ident)
                if fn is None:
                    fn = shared[ident] = f"_b{self.tables}_{len(shared)}"
                    self.emit(0, "")
                    self.emit(0, f"def {fn}(d, m, {', '.join(params)}):")
                    self._bucket(members, 1)
                entries.append(f"    {value!r}: {fn},")
            self.emit(0, "")
            self.emit(0, f"{table} = {{")
            self.lines.extend(entries)
            self.emit(0, "}")
        fields = {key for rule in run for key in self._fields_of(rule)}
        return _Dispatch(table, params, run[0], run[-1], fields)

    def _bucket(self, members: list, indent: int) -> None:
        ended = False
        for rule, rest in members:
            ended = self._rule(rule, indent, "return True", when=rest)
            if ended:
                break
        if not ended:
            self.emit(indent, "return False")

    def _shaped_table(self, table: str, params: list, buckets: dict) -> None:
        """A big table's bucket functions by shape: the rules' bodies with their names and
        constants taken out as parameters. Bodies of one shape are one function that makes a
        closure per bucket from a data table (_A: shape and arguments; _V: value -> bucket), so
        10,000 rules compile as a few functions and a listing in comments, not 10,000 functions."""
        n = self.tables
        shapes: dict[tuple, int] = {}            # body lines -> index in _S
        made: list[tuple] = []                   # per bucket: (shape index, arguments, their texts, rules)
        functions: dict[tuple, int] = {}         # bucket rules -> index in made
        values: list[tuple] = []                 # (value, index in made)
        for value, members in buckets.items():
            ident = tuple(id(rule) for rule, _ in members)
            index = functions.get(ident)
            if index is None:
                outer, outer_map = self.lines, self.line_map
                self.lines, self.line_map, self._shape_args = [], {}, {}
                try:
                    self._bucket(members, 2)
                    body, args = tuple(self.lines), self._shape_args
                finally:
                    self.lines, self.line_map, self._shape_args = outer, outer_map, None
                shape = shapes.get(body)
                if shape is None:
                    shape = shapes[body] = len(shapes)
                    self.emit(0, "")
                    self.emit(0, f"def _s{n}_{shape}({', '.join(p for p, _ in args.values())}):")
                    self.emit(1, f"def b(d, m, {', '.join(params)}):")
                    self.lines.extend(body)
                    self.emit(1, "return b")
                index = functions[ident] = len(made)
                made.append((shape, tuple(v for _, v in args.values()), list(args), [r for r, _ in members]))
            values.append((value, index))
        self.constants[f"_A{n}"] = tuple((shape, args) for shape, args, _, _ in made)
        self.constants[f"_V{n}"] = tuple(values)
        keys: list[list] = [[] for _ in made]
        for value, index in values:
            keys[index].append(repr(value))
        self.emit(0, "")
        self.emit(0, f"_S{n} = ({', '.join(f'_s{n}_{i}' for i in range(len(shapes)))},)")
        self.emit(0, f"# _D{n}[value] = _F{n}[i] = _S{n}[shape](*arguments), from the data tables _A{n} and _V{n}:")
        for i, (shape, _, texts, rules) in enumerate(made):
            where = ", ".join(f"{_file(r.loc)}:{r.loc.line} {r.name}" for r in rules)
            self.emit(0, f"#   {i}: {', '.join(keys[i])} -> _s{n}_{shape}({', '.join(texts)})  {where}", rules[0].loc)
        self.emit(0, f"_F{n} = [_S{n}[shape](*arguments) for shape, arguments in _A{n}]")
        self.emit(0, f"{table} = {{value: _F{n}[i] for value, i in _V{n}}}")

    def _fields_of(self, rule: CheckedRule) -> dict:
        found = self._rule_fields.get(id(rule))
        if found is None:
            found = self._rule_fields[id(rule)] = {f.key: f for expr in _rule_exprs(rule) for f in _fields(expr)}
        return found

    def _index_key(self, rule: CheckedRule) -> _IndexKey | None:
        try:
            return self._index_keys[id(rule)]
        except KeyError:
            key = self._index_keys[id(rule)] = _index_key(rule.when)
            return key

    # ---- one rule -------------------------------------------------------------------------

    def _rule(self, rule: CheckedRule, indent: int, end: str, when: object = "same") -> bool:
        """Emit one rule; True when it always ends the walk (nothing after it can run)."""
        cond = rule.when if when == "same" else when
        if self._shape_args is None:   # a shape's rules are named beside its table entries
            self.emit(indent, f"# {_file(rule.loc)}:{rule.loc.line}: rule {rule.name}", rule.loc)
        if cond is not None:
            self.emit(indent, f"if {self.expr(cond)}:", rule.loc)
            indent += 1
        self.emit(indent, f"m.append({self._name(rule)})")
        terminal = False
        for action in rule.actions:
            self._action(rule, action, indent)
            if action.terminal:
                self.emit(indent, f"d.rule = {self._name(rule)}")
                self.emit(indent, end)
                terminal = True
                break
        return terminal and cond is None

    def _action(self, rule: CheckedRule, a: CheckedAction, indent: int) -> None:
        k = a.kind
        if k == "deny":
            self.emit(indent, f"d.deny = {self._literal(a.value)}")
        elif k == "hide":
            self.emit(indent, "d.hide = True")
        elif k == "route":
            self.emit(indent, f"d.route = {self.const(a.value)}")
            if a.sticky:
                pairs = ", ".join(f"{node_id}: {self._tuple(exprs)}" for node_id, exprs in a.sticky)
                self.emit(indent, f"d.route_by = {{{pairs}}}")
        elif k == "limit":
            self.emit(indent, f"d.limits += (({self.const(a.value)}, {self._tuple(a.by)}),)")
        elif k == "cache":
            self.emit(indent, f"d.cache = {self.const(a.value)}")
            self.emit(indent, f"d.cache_by = {self._tuple(a.by)}")
        elif k == "retry":
            self.emit(indent, f"d.retry = {self.const(a.value)}")
        elif k in ("timeout", "deadline", "log"):
            self.emit(indent, f"d.{k} = {self._literal(a.value)}")
        elif k == "tag":
            self.emit(indent, f"d.tags += ({self._literal(a.value)},)")

    def _tuple(self, exprs) -> str:
        if not exprs:
            return "()"
        return "(" + ", ".join(self.expr(e) for e in exprs) + ",)"

    # ---- expressions ----------------------------------------------------------------------

    def expr(self, e: ast.Expr) -> str:
        if isinstance(e, ast.Literal):
            return repr(e.value)
        if isinstance(e, ast.Field):
            return self.locals[e.key]
        if isinstance(e, ast.Not):
            return f"not {self._atom(e.operand)}"
        if isinstance(e, ast.And):
            return " and ".join(self._atom(o) for o in e.operands)
        if isinstance(e, ast.Or):
            return " or ".join(self._atom(o) for o in e.operands)
        if isinstance(e, ast.ListLit):
            return "(" + ", ".join(repr(i.value) for i in e.items) + ("," if len(e.items) == 1 else "") + ")"
        return self._compare(e)

    def _atom(self, e: ast.Expr) -> str:
        text = self.expr(e)
        return text if isinstance(e, (ast.Literal, ast.Field)) else f"({text})"

    def _compare(self, e: ast.Compare) -> str:
        left, op = self.expr(e.left), e.op
        guards = [x for x in (e.left, e.right)
                  if isinstance(x, ast.Field) and self.locals[x.key] in self.nullable]
        if op in ("in", "not in") and isinstance(e.right, ast.Field):     # "shell" in tools
            core = f"{left} {op} {self.expr(e.right)}"
            needs_guard = False
        elif is_cidr_test(e):
            values = tuple(i.value for i in e.right.items)
            matcher = self._matchers.get(("cidr", values))
            if matcher is None:
                matcher = self._matchers[("cidr", values)] = cidr_matcher(values)
            core = f"{'not ' if op == 'not in' else ''}{self.const(matcher, '_R')}({left})"
            needs_guard = False
        elif op in ("in", "not in"):
            items = e.right.items
            if not items:
                core = "False" if op == "in" else "True"
            else:
                values = ", ".join(repr(i.value) for i in items)
                core = f"{left} {op} {{{values}}}"
            needs_guard = op == "not in"
        elif op == "matches":
            matcher = self._matchers.get(e.right.value)
            if matcher is None:
                matcher = self._matchers[e.right.value] = memo_search(self.policy.regexes[e.right.value])
            core = f"{self.const(matcher, '_R')}({left})"
            needs_guard = True      # only nullable fields (body.PATH, arg()) get a guard
        elif op == "contains":
            core = f"{self.expr(e.right)} in {left}"
            needs_guard = True
        elif op in ("starts_with", "ends_with"):
            core = f"{left}.{op.replace('_', '')}({self.expr(e.right)})"
            needs_guard = True
        else:
            core = f"{left} {op} {self.expr(e.right)}"
            needs_guard = op != "==" or all(isinstance(x, ast.Field) for x in (e.left, e.right))
        if needs_guard and guards:
            checks = " and ".join(f"{self.locals[g.key]} is not None" for g in guards)
            return f"{checks} and {core}"
        return core


# ---- helpers --------------------------------------------------------------------------------

def _file(loc: Location) -> str:
    """A file name fit for a comment: one with a newline in it would end the comment and put
    the rest of the name into the generated code."""
    return loc.file if loc.file.isprintable() else repr(loc.file)[1:-1]


def _index_key(expr: ast.Expr | None) -> _IndexKey | None:
    if expr is None:
        return None
    first, rest = expr, None
    if isinstance(expr, ast.And):
        first = expr.operands[0]
        others = expr.operands[1:]
        rest = others[0] if len(others) == 1 else ast.And(others, expr.loc)
    if not isinstance(first, ast.Compare) or not isinstance(first.left, ast.Field):
        return None
    if first.op == "==" and isinstance(first.right, ast.Literal):
        return _IndexKey(first.left.key, (first.right.value,), rest)
    if first.op == "in" and isinstance(first.right, ast.ListLit) and first.right.items and not is_cidr_test(first):
        return _IndexKey(first.left.key, tuple(dict.fromkeys(i.value for i in first.right.items)), rest)
    return None


def _rule_exprs(rule: CheckedRule):
    if rule.when is not None:
        yield rule.when
    for a in rule.actions:
        yield from a.by
        for _, exprs in a.sticky:
            yield from exprs


def _fields(e: ast.Expr):
    if isinstance(e, ast.Field):
        yield e
    elif isinstance(e, ast.Compare):
        yield from _fields(e.left)
        yield from _fields(e.right)
    elif isinstance(e, ast.Not):
        yield from _fields(e.operand)
    elif isinstance(e, (ast.And, ast.Or)):
        for o in e.operands:
            yield from _fields(o)
