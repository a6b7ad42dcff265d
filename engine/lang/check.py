"""Names, types, targets, percentages, retry bounds, duplicates, env, unreachable rules.

Turns a parsed Program into a CheckedPolicy whose actions carry the runtime specs of spec.py,
collecting every diagnostic instead of stopping at the first.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

import re2

from . import ast
from .errors import Diagnostic
from .schema import FIELDS, field_names
from .source import Location
from .spec import (
    DEFAULT_COOLDOWN, DEFAULT_FAILURES, DEFAULT_RETRY_CODES, DEFAULT_TIMEOUT, CacheSpec, Fallback,
    Fastest, KeySpec, LimitSpec, Price, ProviderSpec, RetrySpec, Single, Split, Target,
    target_leaves,
)

FORMATS = ("openai", "anthropic", "echo")
DEFAULT_URLS = {"anthropic": "https://api.anthropic.com/v1"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # RE2 would print its own copy of the error to stderr


@dataclass(frozen=True, slots=True)
class CheckedAction:
    kind: str          # deny | route | limit | cache | retry | timeout | deadline | tag | log
    value: object      # (status, message) | Target | LimitSpec | CacheSpec | RetrySpec | float | str
    by: tuple = ()     # `by` expressions of a limit or cache
    sticky: tuple = () # route: ((split node_id, by expressions), ...) for every sticky split
    loc: Location | None = None

    @property
    def terminal(self) -> bool:
        return self.kind in ("deny", "route")

    def targets(self) -> list:
        """The target trees this action can send a request to: its route, or a limit's else."""
        if self.kind == "route":
            return [self.value]
        if self.kind == "limit" and self.value.else_route is not None:
            return [self.value.else_route]
        return []


@dataclass(frozen=True, slots=True)
class CheckedRule:
    name: str
    when: ast.Expr | None
    actions: tuple[CheckedAction, ...]
    loc: Location


@dataclass
class CheckedPolicy:
    providers: dict[str, ProviderSpec]
    keys: tuple[KeySpec, ...]
    rules: tuple[CheckedRule, ...]
    regexes: dict[str, object] = field(default_factory=dict)


def check_program(program: ast.Program, env: Mapping[str, str] | None = None
                  ) -> tuple[CheckedPolicy, list[Diagnostic]]:
    checker = _Checker(os.environ if env is None else env)
    return checker.run(program), checker.diagnostics


class _Checker:
    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.diagnostics: list[Diagnostic] = []
        self.regexes: dict[str, object] = {}
        self.split_ids = 0
        self.providers: dict[str, ProviderSpec] = {}

    def error(self, code: str, message: str, loc: Location | None, hint: str | None = None):
        self.diagnostics.append(Diagnostic(code, message, loc, "error", hint))

    def warn(self, code: str, message: str, loc: Location | None, hint: str | None = None):
        self.diagnostics.append(Diagnostic(code, message, loc, "warning", hint))

    def run(self, program: ast.Program) -> CheckedPolicy:
        self.providers = self._providers(program.providers)
        keys = self._keys(program.keys)
        rules = self._rules(program.rules)
        self._warn_missing_prices(rules)
        return CheckedPolicy(self.providers, keys, rules, self.regexes)

    # ---- declarations -------------------------------------------------------------------

    def _duplicate(self, kind: str, name: str, loc: Location, seen: dict[str, Location]) -> bool:
        if name in seen:
            self.error(f"duplicate-{kind}", f"{kind} '{name}' is already declared at {seen[name]}", loc)
            return True
        seen[name] = loc
        return False

    def _value(self, value: ast.Value, secret: bool, what: str) -> str | None:
        if value.kind == "env":
            if value.text not in self.env:
                self.error("missing-env", f"environment variable '{value.text}' is not set", value.loc,
                           hint=f"export {value.text}=... before loading the policy")
                return None
            return self.env[value.text]
        if secret and value.text:
            self.warn("literal-secret", f"{what} is written literally in the file", value.loc,
                      hint='prefer env("NAME") so the secret stays out of the policy files')
        return value.text

    def _once(self, settings, loc_seen: dict, setting: ast.Setting) -> bool:
        if setting.name in loc_seen and setting.name != "price":
            self.error("duplicate-setting", f"'{setting.name}' is already set at {loc_seen[setting.name]}",
                       setting.loc)
            return False
        loc_seen[setting.name] = setting.loc
        return True

    def _providers(self, decls) -> dict[str, ProviderSpec]:
        seen: dict[str, Location] = {}
        out: dict[str, ProviderSpec] = {}
        for decl in decls:
            if self._duplicate("provider", decl.name, decl.loc, seen):
                continue
            out[decl.name] = self._provider(decl)
        return out

    def _provider(self, decl: ast.ProviderDecl) -> ProviderSpec:
        opts: dict = {"prices": []}
        set_at: dict = {}
        price_at: dict[str, Location] = {}
        for s in decl.settings:
            if not self._once(decl.settings, set_at, s):
                continue
            if s.name == "url":
                opts["url"] = self._value(s.args[0], False, "url")
            elif s.name == "api_key":
                opts["api_key"] = self._value(s.args[0], True, f"the api_key of provider '{decl.name}'")
            elif s.name == "format":
                self._format(s, opts)
            elif s.name == "timeout":
                if s.args[0] <= 0:
                    self.error("bad-duration", "timeout must be longer than zero", s.loc)
                opts["timeout"] = s.args[0]
            elif s.name == "cooldown":
                duration, failures, failures_loc = s.args
                if duration <= 0:
                    self.error("bad-duration", "cooldown must be longer than zero", s.loc)
                if not isinstance(failures, int) or failures < 1:
                    self.error("bad-number", "failures must be a whole number of at least 1", failures_loc)
                opts["cooldown"], opts["failures"] = duration, failures
            elif s.name == "price":
                model, inp, out = s.args
                if model in price_at:
                    self.error("duplicate-setting", f"price of '{model}' is already set at {price_at[model]}", s.loc)
                elif inp < 0 or out < 0:
                    self.error("bad-number", "prices cannot be negative", s.loc)
                price_at[model] = s.loc
                opts["prices"].append((model, Price(float(inp), float(out))))
        fmt = opts.get("format", "openai")
        url = opts.get("url") or DEFAULT_URLS.get(fmt)
        bad_format = "format" in set_at and "format" not in opts  # already reported
        if fmt == "openai" and "url" not in opts and not bad_format:
            self.error("missing-url", f"provider '{decl.name}' needs a url", decl.loc,
                       hint='add url "http://..." (any OpenAI-compatible server) or format echo')
        return ProviderSpec(decl.name, fmt, url.rstrip("/") if url else url, opts.get("api_key"),
                            opts.get("timeout", DEFAULT_TIMEOUT), opts.get("cooldown", DEFAULT_COOLDOWN),
                            opts.get("failures", DEFAULT_FAILURES), tuple(opts["prices"]))

    def _format(self, s: ast.Setting, opts: dict) -> None:
        fmt = s.args[0]
        if fmt in FORMATS:
            opts["format"] = fmt
            return
        close = difflib.get_close_matches(fmt, FORMATS, n=1)
        self.error("bad-format", f"unknown format '{fmt}'", s.loc,
                   hint=f"did you mean '{close[0]}'?" if close else "use openai, anthropic or echo")

    def _keys(self, decls) -> tuple[KeySpec, ...]:
        seen: dict[str, Location] = {}
        out = []
        for decl in decls:
            if self._duplicate("key", decl.name, decl.loc, seen):
                continue
            secret = digest = None
            set_at: dict = {}
            for s in decl.settings:
                if not self._once(decl.settings, set_at, s):
                    continue
                if s.name == "secret":
                    secret = self._value(s.args[0], True, f"the secret of key '{decl.name}'")
                elif s.name == "sha256":
                    digest = s.args[0].lower()
                    if not _SHA256.fullmatch(digest):
                        self.error("bad-sha256", "sha256 must be 64 hexadecimal digits", s.loc)
            if ("secret" in set_at) == ("sha256" in set_at):
                self.error("key-secret", f"key '{decl.name}' needs exactly one of secret or sha256", decl.loc)
            elif secret == "":
                self.error("key-secret", f"the secret of key '{decl.name}' is empty", set_at["secret"])
            out.append(KeySpec(decl.name, secret or None, digest))
        return tuple(out)

    # ---- rules --------------------------------------------------------------------------

    def _rules(self, rules) -> tuple[CheckedRule, ...]:
        seen: dict[str, Location] = {}
        out: list[CheckedRule] = []
        ended_by: ast.Rule | None = None
        for rule in rules:
            self._duplicate("rule", rule.name, rule.loc, seen)
            if ended_by is not None:
                self.warn("unreachable-rule", f"rule '{rule.name}' can never run",
                          rule.loc, hint=f"rule '{ended_by.name}' at {ended_by.loc} always ends the walk")
            if rule.when is not None:
                kind = self._expr(rule.when)
                if kind is not None and kind != "bool":
                    self.error("type-mismatch", f"a condition must be true or false, not a {kind}",
                               rule.when.loc)
            actions = self._actions(rule)
            out.append(CheckedRule(rule.name, rule.when, actions, rule.loc))
            if ended_by is None and rule.when is None and any(a.terminal for a in actions):
                ended_by = rule
        return tuple(out)

    def _actions(self, rule: ast.Rule) -> tuple[CheckedAction, ...]:
        out = []
        ended = False
        for index, action in enumerate(rule.actions):
            if ended:
                self.warn("unreachable-action", "this action never runs: the rule already ended the walk",
                          action.loc)
            checked = self._action(rule, index, action)
            if checked is not None:
                out.append(checked)
                ended = ended or checked.terminal
        return tuple(out)

    def _action(self, rule: ast.Rule, index: int, a) -> CheckedAction | None:
        if isinstance(a, ast.Deny):
            if not isinstance(a.status, int) or not 400 <= a.status <= 599:
                self.error("deny-status", f"deny status must be between 400 and 599, not {a.status}", a.status_loc)
            message = a.message if a.message is not None else f"request denied by rule '{rule.name}'"
            return CheckedAction("deny", (int(a.status), message), loc=a.loc)
        if isinstance(a, ast.Route):
            sticky: list = []
            return CheckedAction("route", self._target(a.target, sticky), sticky=tuple(sticky), loc=a.loc)
        if isinstance(a, ast.Limit):
            return self._limit(rule, index, a)
        if isinstance(a, ast.Cache):
            self._by(a.by)
            if a.ttl is not None and a.ttl <= 0:
                self.error("bad-duration", "cache ttl must be longer than zero", a.loc)
            return CheckedAction("cache", CacheSpec(rule.name, a.ttl, _texts(a.by)), by=a.by, loc=a.loc)
        if isinstance(a, ast.Retry):
            return CheckedAction("retry", self._retry(a), loc=a.loc)
        if isinstance(a, (ast.Timeout, ast.Deadline)):
            kind = "timeout" if isinstance(a, ast.Timeout) else "deadline"
            if a.seconds <= 0:
                self.error("bad-duration", f"{kind} must be longer than zero", a.loc)
            return CheckedAction(kind, a.seconds, loc=a.loc)
        if isinstance(a, ast.Tag):
            return CheckedAction("tag", a.label, loc=a.loc)
        return CheckedAction("log", a.level, loc=a.loc)

    def _limit(self, rule: ast.Rule, index: int, a: ast.Limit) -> CheckedAction:
        if a.window < 1 or a.window != int(a.window):
            self.error("limit-window", "a limit window must be whole seconds, at least 1s", a.window_loc)
        if a.amount <= 0 or (a.kind != "cost" and not isinstance(a.amount, int)):
            what = "a positive number" if a.kind == "cost" else "a positive whole number"
            self.error("bad-number", f"a {a.kind} limit needs {what}", a.amount_loc)
        self._by(a.by)
        else_route = None
        if a.else_route is not None:
            sticky: list = []
            else_route = self._target(a.else_route, sticky)
            if sticky:
                self.error("sticky-else", "a split under 'else route' cannot use 'by'", a.else_route.loc)
        spec = LimitSpec(f"{rule.name}#{index}", rule.name, a.kind, a.amount, max(1, int(a.window)),
                         _texts(a.by), else_route)
        return CheckedAction("limit", spec, by=a.by, loc=a.loc)

    def _retry(self, a: ast.Retry) -> RetrySpec:
        for name, loc in a.repeated:
            self.error("duplicate-option", f"'{name}' is given twice in this retry", loc)
        if not isinstance(a.attempts, int) or not 1 <= a.attempts <= 5:
            self.error("retry-range", f"retry takes 1 to 5 attempts, not {a.attempts}", a.attempts_loc)
        codes = set()
        for code in a.on or ():
            if code.text.isdigit() and not 100 <= int(code.text) <= 599:
                self.error("retry-code", f"'{code.text}' is not an HTTP status", code.loc)
            codes.add(code.text)
        delay = a.delay if a.delay is not None else 0.1
        max_delay = a.max_delay if a.max_delay is not None else 5.0
        if delay < 0 or max_delay < 0:
            self.error("bad-duration", "retry delays cannot be negative", a.loc)
        attempts = min(5, max(1, int(a.attempts))) if isinstance(a.attempts, (int, float)) else 1
        return RetrySpec(attempts, a.backoff or "exponential", delay, max_delay, a.jitter,
                         frozenset(codes) if a.on is not None else DEFAULT_RETRY_CODES)

    def _by(self, exprs) -> None:
        for expr in exprs:
            kind = self._expr(expr)
            if kind == "list":
                self.error("type-mismatch", "'by' takes values, not a list", expr.loc)

    # ---- targets ------------------------------------------------------------------------

    def _target(self, node: ast.TargetNode, sticky: list) -> Target:
        if isinstance(node, ast.TargetRef):
            if node.provider not in self.providers:
                close = difflib.get_close_matches(node.provider, list(self.providers), n=1)
                self.error("unknown-provider", f"unknown provider '{node.provider}'", node.loc,
                           hint=f"did you mean '{close[0]}'?" if close else "declare it with provider NAME { ... }")
            return Single(node.provider, node.model or None)
        members = tuple(self._target(m, sticky) for m in node.members)
        if isinstance(node, ast.FallbackT):
            return Fallback(members)
        if isinstance(node, ast.FastestT):
            return Fastest(members)
        total = sum(node.weights)
        if any(w <= 0 for w in node.weights):
            self.error("split-total", "split percentages must be above 0", node.loc)
        elif not math.isclose(total, 100, abs_tol=1e-9):
            self.error("split-total", f"split percentages add up to {_num(total)}, not 100", node.loc)
        self.split_ids += 1
        self._by(node.by)
        if node.by:
            sticky.append((self.split_ids, node.by))
        return Split(tuple(float(w) for w in node.weights), members, bool(node.by), self.split_ids)

    def _warn_missing_prices(self, rules) -> None:
        if not any(a.kind == "limit" and a.value.kind == "cost" for r in rules for a in r.actions):
            return
        warned = set()
        for rule in rules:
            for a in rule.actions:
                for target in a.targets():
                    for leaf in target_leaves(target):
                        provider = self.providers.get(leaf.provider)
                        name = f"{leaf.provider}/{leaf.model}"
                        if provider is None or leaf.model is None or name in warned:
                            continue
                        if provider.price(leaf.model) is None:
                            warned.add(name)
                            self.warn("missing-price", f"no price for '{name}': its cost counts as zero",
                                      a.loc, hint=f"add price {leaf.model} input USD output USD to provider '{leaf.provider}'")

    # ---- expressions ----------------------------------------------------------------------

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
        if kind is not None and kind != "bool":
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
        return d.type

    def _compare(self, e: ast.Compare) -> str | None:
        left = self._expr(e.left)
        right = self._expr(e.right)
        if left is None or right is None:
            return "bool"
        op = e.op
        if op in ("in", "not in"):
            if not isinstance(e.right, ast.ListLit):
                self.error("type-mismatch", f"'{op}' needs a list such as [\"a\", \"b\"]", e.right.loc)
            elif e.right.items and e.right.items[0].type != left:
                self.error("type-mismatch", f"cannot look for a {left} in a list of {e.right.items[0].type}s", e.loc)
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


def _texts(exprs) -> tuple[str, ...]:
    return tuple(_expr_text(e) for e in exprs)


def _expr_text(e) -> str:
    if isinstance(e, ast.Field):
        return e.text()
    if isinstance(e, ast.Literal):
        return repr(e.value) if e.type == "string" else str(e.value)
    return "<expression>"


def _num(x: float) -> str:
    x = round(float(x), 9)  # a sum of decimals: 33.3 + 66.6 is 99.89999999999999
    return str(int(x)) if x.is_integer() else str(x)
