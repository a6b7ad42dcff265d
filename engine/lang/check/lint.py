"""Deeper checks after a policy checks clean: shadowed rules, conditions that are never true,
unused providers and keys, a limit whose `else route` is the rule's own route.

Every warning is sound: it is given only when the checker can prove it. A condition is read as
constraints on one field each (a finite set of values, all values but a set, or a number
interval); anything else is opaque, and opaque parts only ever make a proof fail.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .. import ast
from ..spec import target_leaves

# hour and weekday take a few whole values: a constraint on them is the set of values it allows.
_FINITE = {"hour": frozenset(range(24)), "weekday": frozenset(range(7))}
_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_GENERAL_CANDIDATES = 500   # earlier rules without a value set, tried against each later rule


@dataclass(frozen=True, slots=True)
class Constraint:
    """What one comparison says about one field's value."""

    field: tuple             # Field.key
    kind: str                # set | coset | range | test
    values: frozenset = frozenset()            # set / coset
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    test: object = None      # kind test: a predicate on one value (matches, starts_with, ...)
    expr: object = None      # the comparison, for messages

    def allows(self, value) -> bool:
        if self.kind == "set":
            return value in self.values
        if self.kind == "coset":
            return value not in self.values
        if self.kind == "test":
            return self.test(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def lint(checker, program: ast.Program, rules, tool_rules=()) -> None:
    """Add the lint warnings of a checked program to checker.diagnostics. Shadowed and never-true
    rules are found among model rules; a key named by a tool rule is a used key."""
    if any(d.severity == "error" for d in checker.diagnostics):
        return
    keys = frozenset(k.name for k in program.keys)
    reader = _Reader(checker.regexes, keys)
    never = _never_true(checker, reader, rules)
    _shadowed(checker, reader, rules, never)
    _unused(checker, program, rules, tool_rules)
    _same_else_route(checker, rules)


# ---- reading conditions ---------------------------------------------------------------------

class _Reader:
    def __init__(self, regexes: dict, keys: frozenset):
        self.regexes = regexes
        self.keys = keys
        # Per condition node, read once: the passes ask about the same nodes several times each.
        # Keyed by id, with the node kept so the id is not reused while the entry lives.
        self._constraints: dict[int, tuple] = {}
        self._shapes: dict[int, tuple] = {}

    def constraint(self, e: ast.Expr) -> Constraint | bool | None:
        """A Constraint, True/False for a constant, None when opaque."""
        known = self._constraints.get(id(e))
        if known is None or known[0] is not e:
            known = self._constraints[id(e)] = (e, self._read(e))
        return known[1]

    def shape(self, e: ast.Expr) -> object:
        known = self._shapes.get(id(e))
        if known is None or known[0] is not e:
            known = self._shapes[id(e)] = (e, _shape(e))
        return known[1]

    def _read(self, e: ast.Expr) -> Constraint | bool | None:
        if isinstance(e, ast.Literal) and e.type == "bool":
            return e.value
        if isinstance(e, ast.Field) and e.name == "stream":
            return Constraint(_key(e), "set", frozenset({True}), expr=e)
        if isinstance(e, ast.Not) and isinstance(e.operand, ast.Field) and e.operand.name == "stream":
            return Constraint(_key(e.operand), "set", frozenset({False}), expr=e)
        if not isinstance(e, ast.Compare):
            return None
        left, op, right = e.left, e.op, e.right
        if isinstance(left, (ast.Literal, ast.ListLit)) and isinstance(right, ast.Field) and op in _FLIP:
            left, op, right = right, _FLIP[op], left
        if not isinstance(left, ast.Field) or not isinstance(right, (ast.Literal, ast.ListLit)):
            return None
        if left.name == "ip":
            return None    # `ip in [...]` takes networks: values are not compared as written
        c = self._field_constraint(left, op, right, e)
        if c is not None and left.name in _FINITE:
            c = Constraint(c.field, "set", frozenset(v for v in _FINITE[left.name] if c.allows(v)), expr=e)
        elif c is not None and left.name == "stream":
            c = Constraint(c.field, "set", frozenset(v for v in (True, False) if c.allows(v)), expr=e)
        elif c is not None and left.name == "key" and self.keys:
            # With keys declared, every request is authenticated as one of them.
            c = Constraint(c.field, "set", frozenset(v for v in self.keys if c.allows(v)), expr=e)
        return c

    def _field_constraint(self, f: ast.Field, op: str, lit, e) -> Constraint | None:
        key = _key(f)
        if op in ("in", "not in"):
            if not isinstance(lit, ast.ListLit):
                return None
            values = frozenset(i.value for i in lit.items)
            return Constraint(key, "set" if op == "in" else "coset", values, expr=e)
        if not isinstance(lit, ast.Literal):
            return None
        v = lit.value
        if op == "==":
            return Constraint(key, "set", frozenset({v}), expr=e)
        if op == "!=":
            return Constraint(key, "coset", frozenset({v}), expr=e)
        if op in ("<", "<="):
            return Constraint(key, "range", high=v, high_open=op == "<", expr=e)
        if op in (">", ">="):
            return Constraint(key, "range", low=v, low_open=op == ">", expr=e)
        if op == "matches" and v in self.regexes:
            pattern = self.regexes[v]
            return Constraint(key, "test", test=lambda s: pattern.search(s) is not None, expr=e)
        if op == "contains":
            return Constraint(key, "test", test=lambda s: v in s, expr=e)
        if op == "starts_with":
            return Constraint(key, "test", test=lambda s: s.startswith(v), expr=e)
        if op == "ends_with":
            return Constraint(key, "test", test=lambda s: s.endswith(v), expr=e)
        return None


def _key(f: ast.Field) -> tuple:
    """Which value a field reads: header names are case-insensitive."""
    return (f.name, f.arg.lower() if f.name == "header" else f.arg)


def _conjuncts(e: ast.Expr) -> tuple:
    return e.operands if isinstance(e, ast.And) else (e,)


def _shape(e) -> object:
    """A node without its locations, so that two conditions written alike compare equal."""
    if isinstance(e, ast.Literal):
        return ("lit", e.type, e.value)
    if isinstance(e, ast.ListLit):
        return ("list", tuple(_shape(i) for i in e.items))
    if isinstance(e, ast.Field):
        return ("field", e.name, e.arg.lower() if e.name == "header" else e.arg)
    if isinstance(e, ast.Compare):
        return ("cmp", e.op, _shape(e.left), _shape(e.right))
    if isinstance(e, ast.Not):
        return ("not", _shape(e.operand))
    return (type(e).__name__, tuple(_shape(o) for o in e.operands))


# ---- never-true -----------------------------------------------------------------------------

def _unsatisfiable(reader: _Reader, e: ast.Expr):
    """(first, second) comparisons that no request satisfies together (second None for one that
    alone is never true), or None when the checker cannot prove it."""
    if isinstance(e, ast.Or):
        found = [_unsatisfiable(reader, o) for o in e.operands]
        return found[0] if all(found) else None
    by_field: dict[tuple, list[Constraint]] = {}
    for part in _conjuncts(e):
        if isinstance(part, ast.Or):
            found = _unsatisfiable(reader, part)
            if found:
                return found
            continue
        c = reader.constraint(part)
        if c is False:
            return (part, None)
        if isinstance(c, Constraint):
            by_field.setdefault(c.field, []).append(c)
    for constraints in by_field.values():
        found = _conflict(constraints)
        if found:
            return found
    return None


def _conflict(cs: list[Constraint]):
    sets = [c for c in cs if c.kind == "set"]
    if sets:
        allowed = set(sets[0].values)
        if not allowed:
            return (sets[0].expr, None)
        for c in cs[:]:
            left = {v for v in allowed if c.allows(v)}
            if not left:
                return (sets[0].expr, c.expr) if c is not sets[0] else (c.expr, None)
            allowed = left
        return None
    ranges = [c for c in cs if c.kind == "range"]
    low, high, low_open, high_open, first = -math.inf, math.inf, False, False, None
    for c in ranges:
        if c.low > low or (c.low == low and c.low_open):
            low, low_open = c.low, c.low_open
        if c.high < high or (c.high == high and c.high_open):
            high, high_open = c.high, c.high_open
        first = first or c
        if low > high or (low == high and (low_open or high_open)):
            return (first.expr, c.expr) if c is not first else (c.expr, None)
    return None


def _never_true(checker, reader: _Reader, rules) -> set[str]:
    never = set()
    for rule in rules:
        if rule.when is None:
            continue
        found = _unsatisfiable(reader, rule.when)
        if found is None:
            continue
        never.add(rule.name)
        first, second = found
        if second is None:
            hint = f"'{_text(first)}' is never true"
        else:
            hint = f"'{_text(first)}' at {first.loc} and '{_text(second)}' at {second.loc} exclude each other"
        checker.warn("never-true", f"the condition of rule '{rule.name}' is never true: the rule never runs",
                     rule.when.loc, hint=hint)
    return never


def _text(e) -> str:
    if isinstance(e, ast.Literal):
        return f'"{e.value}"' if e.type == "string" else str(e.value).lower() if e.type == "bool" else _num(e.value)
    if isinstance(e, ast.ListLit):
        return "[" + ", ".join(_text(i) for i in e.items) + "]"
    if isinstance(e, ast.Field):
        return e.text()
    if isinstance(e, ast.Not):
        return f"not {_text(e.operand)}"
    if isinstance(e, ast.Compare):
        return f"{_text(e.left)} {e.op} {_text(e.right)}"
    return "..."


def _num(x) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


# ---- shadowed rules -------------------------------------------------------------------------

def _implies(reader: _Reader, b: ast.Expr, a: ast.Expr) -> bool:
    """Whenever b holds, a holds (False when the checker cannot prove it)."""
    if reader.shape(b) == reader.shape(a):
        return True
    if isinstance(a, ast.Or) and any(_implies(reader, b, x) for x in a.operands):
        return True
    if isinstance(b, ast.Or):
        return all(_implies(reader, x, a) for x in b.operands)
    if isinstance(a, ast.And):
        return all(_implies(reader, b, x) for x in a.operands)
    if isinstance(b, ast.And):
        return any(_implies(reader, x, a) for x in b.operands)
    ca = reader.constraint(a)
    if ca is True:
        return True
    cb = reader.constraint(b)
    if cb is False:
        return True
    if not isinstance(ca, Constraint) or not isinstance(cb, Constraint) or ca.field != cb.field:
        return False
    if cb.kind == "set":
        return all(ca.allows(v) for v in cb.values)
    if cb.kind == "coset":
        return ca.kind == "coset" and ca.values <= cb.values
    if cb.kind == "range":
        if ca.kind == "range":
            low_ok = cb.low > ca.low or (cb.low == ca.low and (cb.low_open or not ca.low_open))
            high_ok = cb.high < ca.high or (cb.high == ca.high and (cb.high_open or not ca.high_open))
            return low_ok and high_ok
        if ca.kind == "coset":
            return not any(cb.allows(v) for v in ca.values)
    return False


def _index_values(reader: _Reader, e: ast.Expr) -> tuple | None:
    """(field, values) of the first value-set comparison among the condition's conjuncts."""
    for part in _conjuncts(e):
        c = reader.constraint(part)
        if isinstance(c, Constraint) and c.kind == "set" and c.values:
            return c.field, c.values
    return None


def _shadowed(checker, reader: _Reader, rules, never: set[str]) -> None:
    # Earlier walk-ending rules, indexed by (field, value) of a value set in their condition: a
    # rule that covers a later one allows every value the later one's set allows, so looking
    # up one of those values finds it. That keeps 10,000 `model ==` rules linear.
    indexed: dict[tuple, list] = {}
    general: list = []
    for order, rule in enumerate(rules):
        if rule.when is not None and rule.name not in never:
            candidates = list(general[-_GENERAL_CANDIDATES:])
            for part in _conjuncts(rule.when):
                c = reader.constraint(part)
                if isinstance(c, Constraint) and c.kind == "set" and c.values:
                    candidates.extend(indexed.get((c.field, next(iter(c.values))), ()))
            earlier = min((a for a in candidates if _implies(reader, rule.when, a.when)),
                          key=lambda a: a.order, default=None)
            if earlier is not None:
                checker.warn("shadowed-rule", f"rule '{rule.name}' never runs: an earlier rule takes "
                             "every request it matches", rule.loc,
                             hint=f"rule '{earlier.name}' at {earlier.loc} matches all of them and ends the walk")
        if rule.when is None or rule.name in never or not any(a.terminal for a in rule.actions):
            continue
        entry = _Entry(rule.name, rule.when, rule.loc, order)
        mine = _index_values(reader, rule.when)
        if mine is None:
            general.append(entry)
        else:
            for v in mine[1]:
                indexed.setdefault((mine[0], v), []).append(entry)


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    when: ast.Expr
    loc: object
    order: int


# ---- unused declarations, redundant else routes ----------------------------------------------

def _unused(checker, program: ast.Program, rules, tool_rules=()) -> None:
    # Without a rule that ends every walk, a request for "provider/MODEL" reaches any provider
    # that no rule names: it is unused only when such a rule exists.
    catch_all = next((r for r in rules if r.when is None and any(a.terminal for a in r.actions)), None)
    named = {leaf_provider for rule in rules for a in rule.actions for t in a.targets()
             for leaf_provider in _providers(t)}
    for decl in program.providers if catch_all is not None else ():
        if decl.name not in named:
            # A note, not a warning: a provider kept declared for later is common and harmless.
            checker.note("unused-provider", f"provider '{decl.name}' is never used: no rule routes to it",
                         decl.loc, hint=f"rule '{catch_all.name}' at {catch_all.loc} ends every walk, so no "
                                        f"request for '{decl.name}/MODEL' reaches it either")
    key_names = set()
    for rule in (*rules, *tool_rules):
        if rule.when is not None:
            key_names |= _key_literals(rule.when)
    if not key_names:
        return    # keys that only authenticate: no rule tells them apart, and none need to
    for decl in program.keys:
        if decl.name not in key_names:
            checker.warn("unused-key", f"key '{decl.name}' is named by no rule, though rules tell keys apart",
                         decl.loc, hint="its requests get what a request of no listed key gets; "
                                        "name it in a condition, or remove it")


def _providers(target):
    return (leaf.provider for leaf in target_leaves(target))


def _key_literals(e) -> set:
    if isinstance(e, (ast.And, ast.Or)):
        return set().union(*(_key_literals(o) for o in e.operands))
    if isinstance(e, ast.Not):
        return _key_literals(e.operand)
    if isinstance(e, ast.Compare):
        sides = (e.left, e.right)
        if any(isinstance(s, ast.Field) and s.name == "key" for s in sides):
            out = set()
            for s in sides:
                if isinstance(s, ast.Literal):
                    out.add(s.value)
                elif isinstance(s, ast.ListLit):
                    out |= {i.value for i in s.items}
            return out
    return set()


def _same_else_route(checker, rules) -> None:
    for rule in rules:
        routes = [a for a in rule.actions if a.kind == "route"]
        if not routes:
            continue
        route = routes[0]
        for a in rule.actions:
            if a.kind == "limit" and a.value.else_route is not None and \
                    a.value.else_route.to_dict() == route.value.to_dict():
                checker.warn("same-else-route", "'else route' sends the request where the rule's own "
                             "route does: over the limit nothing changes", a.loc,
                             hint=f"the route of rule '{rule.name}' is at {route.loc}; drop 'else route' "
                                  "to answer 429, or name another target")
