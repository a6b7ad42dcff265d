"""Checks of the rules: order (unreachable rules and actions), actions, limits, retries, targets, prices."""
from __future__ import annotations

import dataclasses
import difflib
import math

from .. import ast
from ..source import Location
from ..spec import (
    DEFAULT_RETRY_CODES, CacheSpec, Fallback, Fastest, Hedge, LimitSpec, RetrySpec, Single, Split, Target,
    target_leaves,
)
from .checked import CheckedAction, CheckedRule
from .expressions import texts, with_body_kinds


class RuleChecks:
    """Mixed into the checker: needs self.providers, self.split_ids, self.error, self.warn, self._expr."""

    def _rules(self, rules) -> tuple[CheckedRule, ...]:
        seen: dict[str, Location] = {}
        out: list[CheckedRule] = []
        ended_by: ast.Rule | None = None
        for rule in rules:
            self._duplicate("rule", rule.name, rule.loc, seen)
            if ended_by is not None:
                self.warn("unreachable-rule", f"rule '{rule.name}' can never run",
                          rule.loc, hint=f"rule '{ended_by.name}' at {ended_by.loc} always ends the walk")
            when = rule.when
            self.body_kinds.clear()
            if when is not None:
                kind = self._expr(when)
                if kind == "any":
                    self.error("type-mismatch", f"compare '{when.text()}' with a value: a body field "
                               "is typed by what it is compared with", when.loc)
                elif kind is not None and kind != "bool":
                    self.error("type-mismatch", f"a condition must be true or false, not a {kind}",
                               when.loc)
            actions = self._actions(rule)
            if self.body_kinds:   # body fields compared anywhere in the rule get their types
                when, actions = self._typed_body_fields(when, actions)
            out.append(CheckedRule(rule.name, when, actions, rule.loc))
            if ended_by is None and rule.when is None and any(a.terminal for a in actions):
                ended_by = rule
        return tuple(out)

    def _typed_body_fields(self, when, actions):
        kinds = self.body_kinds

        def typed(exprs):
            return tuple(with_body_kinds(e, kinds) for e in exprs)
        actions = tuple(dataclasses.replace(a, by=typed(a.by),
                                            sticky=tuple((nid, typed(exprs)) for nid, exprs in a.sticky))
                        for a in actions)
        return (with_body_kinds(when, kinds) if when is not None else None), actions

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
            if a.ttl is not None:
                self._note_cache_scope(rule, a)
            semantic = self._semantic(a.semantic) if a.semantic is not None else None
            return CheckedAction("cache", CacheSpec(rule.name, a.ttl, texts(a.by), a.shared, semantic),
                                 by=a.by, loc=a.loc)
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

    def _semantic(self, s: ast.SemanticCache):
        """`cache semantic T ttl D using P/M`: a similarity in (0, 1], a provider that embeds."""
        from ..spec import SemanticSpec

        if not 0 < s.threshold <= 1:
            self.error("semantic-threshold", f"a semantic cache's threshold is a cosine similarity above 0 and "
                                             f"at most 1, not {_num(s.threshold)}", s.threshold_loc,
                       hint="0.95 serves close paraphrases only; lower values serve looser matches")
        provider = self.providers.get(s.provider)
        if provider is None:
            close = difflib.get_close_matches(s.provider, list(self.providers), n=1)
            self.error("unknown-provider", f"unknown provider '{s.provider}'", s.using_loc,
                       hint=f"did you mean '{close[0]}'?" if close else "declare it with provider NAME { ... }")
        elif provider.format in ("anthropic", "bedrock"):
            self.error("no-embeddings", f"provider '{s.provider}' ({provider.format} format) does not serve "
                                        f"embeddings", s.using_loc,
                       hint="name an openai, azure, gemini or echo provider after 'using'")
        return SemanticSpec(float(s.threshold), s.provider, s.model)

    def _note_cache_scope(self, rule: ast.Rule, a: ast.Cache) -> None:
        if a.shared:
            self.note("cache-scope", f"answers cached by rule '{rule.name}' are shared by every key and user",
                      a.loc, hint="drop 'shared' to cache per key and per user (the default)")
        else:
            self.note("cache-scope", f"answers cached by rule '{rule.name}' are kept per key and per user",
                      a.loc, hint="add 'shared' (cache ttl ... shared) to serve one answer to every caller")

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
                         texts(a.by), else_route)
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
        if isinstance(node, ast.HedgeT):
            return self._hedge(node, members)
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

    def _hedge(self, node: ast.HedgeT, members: tuple) -> Hedge:
        if len(members) < 2:
            self.error("hedge-members", "a hedge needs at least two members to race", node.loc)
        if node.percentile is not None and not 50 <= node.percentile < 100:
            self.error("hedge-delay", f"a hedge waits for a percentile from p50 to p99.9, not p{node.percentile:g}",
                       node.after_loc)
        if node.delay is not None and node.delay < 0:
            self.error("bad-duration", "a hedge's delay cannot be negative", node.after_loc)
        return Hedge(members, max(0.0, node.delay or 0.0), node.percentile)

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



def _num(x: float) -> str:
    x = round(float(x), 9)  # a sum of decimals: 33.3 + 66.6 is 99.89999999999999
    return str(int(x)) if x.is_integer() else str(x)
