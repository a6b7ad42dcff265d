"""Checks of conditions: field names and forms, types of comparisons, regexes (compiled once, on RE2)."""
from __future__ import annotations

import dataclasses
import difflib
import ipaddress

import re2

from .. import ast
from ..schema import FIELDS, field_names

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print its own copy of the error to stderr


class ExpressionChecks:
    """Mixed into the checker: needs self.regexes, self.error."""

    def _expr(self, e: ast.Expr) -> str | None:
        """The type of an expression, or None after reporting why it has none."""
        if isinstance(e, ast.Literal):
            return e.type
        if isinstance(e, ast.ListLit):
            types = {i.type for i in e.items}
            if len(types) > 1:
                self.error("type-mismatch", f"a list cannot mix {' and '.join(sorted(types))}", e.loc)
            return "list"
        if isinstance(e, ast.Field):
            return self._field(e)
        if isinstance(e, ast.Not):
            self._expect_bool(e.operand, "'not'")
            return "bool"
        if isinstance(e, (ast.And, ast.Or)):
            word = "'and'" if isinstance(e, ast.And) else "'or'"
            for operand in e.operands:
                self._expect_bool(operand, word)
            return "bool"
        return self._compare(e)

    def _expect_bool(self, e: ast.Expr, word: str) -> None:
        kind = self._expr(e)
        if kind == "any":
            self.error("type-mismatch", f"{word} needs true or false: write {e.text()} == true", e.loc)
        elif kind is not None and kind != "bool":
            self.error("type-mismatch", f"{word} needs true or false, not a {kind}", e.loc)

    def _field(self, f: ast.Field) -> str | None:
        d = FIELDS.get(f.name)
        if d is None:
            close = difflib.get_close_matches(f.text(), field_names(), n=1, cutoff=0.5)
            if not close:
                close = difflib.get_close_matches(f.name, list(FIELDS), n=1, cutoff=0.5)
            self.error("unknown-field", f"unknown field '{f.text()}'", f.loc,
                       hint=f"did you mean '{close[0]}'?" if close else None)
            return None
        if d.form != f.form:
            usage = {"call": f'{d.name}("x-name")', "dotted": f"{d.name}.NAME", "plain": d.name}[d.form]
            self.error("field-form", f"field '{d.name}' is written {usage}", f.loc)
            return None
        if d.name == "metadata" and "." in f.arg:
            self.error("field-form", "metadata.NAME takes one name (the header holds a flat object)", f.loc)
            return None
        return d.type

    def _compare(self, e: ast.Compare) -> str | None:
        left = self._expr(e.left)
        right = self._expr(e.right)
        if left is None or right is None:
            return "bool"
        if "any" in (left, right):
            return self._compare_body(e, left, right)
        op = e.op
        if op in ("in", "not in"):
            if isinstance(e.right, ast.Field) and right == "list":   # "shell" in tools
                if left != "string":
                    self.error("type-mismatch", f"'{e.right.text()}' holds names: look for a string, not a {left}",
                               e.left.loc)
            elif not isinstance(e.right, ast.ListLit):
                self.error("type-mismatch", f"'{op}' needs a list such as [\"a\", \"b\"]", e.right.loc)
            elif e.right.items and e.right.items[0].type != left:
                self.error("type-mismatch", f"cannot look for a {left} in a list of {e.right.items[0].type}s", e.loc)
            elif is_cidr_test(e):
                self._networks(e.right)
            return "bool"
        if "list" in (left, right):
            self.error("type-mismatch", "a list can only follow 'in' or 'not in'", e.loc)
            return "bool"
        if op == "matches":
            if left != "string":
                self.error("type-mismatch", f"'matches' needs a string on its left, not a {left}", e.left.loc)
            if not (isinstance(e.right, ast.Literal) and e.right.type == "string"):
                self.error("type-mismatch", "'matches' needs a string literal pattern", e.right.loc)
            else:
                self._regex(e.right)
            return "bool"
        if op in ("contains", "starts_with", "ends_with"):
            if left != "string" or right != "string":
                bad = e.left if left != "string" else e.right
                self.error("type-mismatch", f"'{op}' compares strings, not a {left if left != 'string' else right}", bad.loc)
            return "bool"
        if left != right:
            self.error("type-mismatch", f"cannot compare {left} with {right}", e.loc)
        elif op in ("<", "<=", ">", ">=") and left not in ("number", "duration"):
            self.error("type-mismatch", f"'{op}' compares numbers, not {left}s", e.loc)
        return "bool"

    def _compare_body(self, e: ast.Compare, left: str, right: str) -> str:
        """body.PATH takes the type of what it is compared with; a value of another type (or a
        missing one) makes the comparison false at run time."""
        if left == right == "any":
            self.error("type-mismatch", "compare a body field with a value, not with another body field", e.loc)
            return "bool"
        field, other = (e.left, right) if left == "any" else (e.right, left)
        op = e.op
        if op in ("in", "not in"):
            if field is not e.left or not isinstance(e.right, ast.ListLit):
                self.error("type-mismatch", f"write {field.text()} {op} [\"a\", \"b\"]", e.loc)
                return "bool"
            kind = e.right.items[0].type if e.right.items else "string"
        elif op in ("matches", "contains", "starts_with", "ends_with"):
            if field is not e.left:
                self.error("type-mismatch", f"'{op}' needs the body field on its left", e.loc)
                return "bool"
            kind = "string"
            if op == "matches" and isinstance(e.right, ast.Literal) and e.right.type == "string":
                self._regex(e.right)
            elif other != "string":
                self.error("type-mismatch", f"'{op}' compares strings, not a {other}", e.right.loc)
                return "bool"
        else:
            kind = other
            if kind not in ("string", "number", "bool"):
                self.error("type-mismatch", f"a body field compares with a string, number or true/false, "
                                            f"not a {kind}", e.loc)
                return "bool"
            if op in ("<", "<=", ">", ">=") and kind != "number":
                self.error("type-mismatch", f"'{op}' compares numbers, not {kind}s", e.loc)
                return "bool"
        self.body_kinds[id(field)] = kind
        return "bool"

    def _networks(self, items: ast.ListLit) -> None:
        for item in items.items:
            try:
                ipaddress.ip_network(item.value, strict=False)
            except ValueError:
                self.error("bad-cidr", f"'{item.value}' is not an IP address or network", item.loc,
                           hint='write networks as "10.0.0.0/8" or "2001:db8::/32"')

    def _regex(self, lit: ast.Literal) -> None:
        pattern = lit.value
        if pattern in self.regexes:
            return
        try:
            self.regexes[pattern] = re2.compile(pattern, _RE2_OPTIONS)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else "cannot compile"
            reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
            # The pattern as the user means it: repr() would double every backslash.
            shown = pattern.replace("\n", "\\n").replace("\t", "\\t")
            self.error("invalid-regex", f"invalid regex '{shown}': {reason}", lit.loc,
                       hint="patterns run on RE2: no backreferences or lookaround")




def is_cidr_test(e: ast.Compare) -> bool:
    """`ip in [...]` with a network among the values: membership, not string equality."""
    return (e.op in ("in", "not in") and isinstance(e.left, ast.Field) and e.left.name == "ip"
            and isinstance(e.right, ast.ListLit) and any("/" in str(i.value) for i in e.right.items))


def with_body_kinds(e: ast.Expr, kinds: dict[int, str]) -> ast.Expr:
    """The expression with each compared body field carrying its type (see Field.kind)."""
    if isinstance(e, ast.Field):
        kind = kinds.get(id(e))
        return dataclasses.replace(e, kind=kind) if kind else e
    if isinstance(e, ast.Compare):
        return dataclasses.replace(e, left=with_body_kinds(e.left, kinds), right=with_body_kinds(e.right, kinds))
    if isinstance(e, ast.Not):
        return dataclasses.replace(e, operand=with_body_kinds(e.operand, kinds))
    if isinstance(e, (ast.And, ast.Or)):
        return dataclasses.replace(e, operands=tuple(with_body_kinds(o, kinds) for o in e.operands))
    return e


def texts(exprs) -> tuple[str, ...]:
    return tuple(_expr_text(e) for e in exprs)


def _expr_text(e) -> str:
    if isinstance(e, ast.Field):
        return e.text()
    if isinstance(e, ast.Literal):
        return repr(e.value) if e.type == "string" else str(e.value)
    return "<expression>"
