"""The reference interpreter: walks the checked rules directly. Slow, simple, obviously right.

It is the oracle the compiled code is tested against, and the baseline of the benchmarks.
"""
from __future__ import annotations

from . import ast
from .check import CheckedPolicy
from .check.expressions import is_cidr_test
from .decision import Decision, ToolDecision, finish_without_route
from .schema import cidr_matcher, extractor


class Interpreter:
    def __init__(self, policy: CheckedPolicy):
        self.policy = policy

    def decide(self, body, headers, key, path, method, ip, now) -> Decision:
        request = {"body": body, "headers": headers, "key": key, "path": path,
                   "method": method, "ip": ip, "now": now}
        d = Decision()
        if self.walk(d, self.policy.rules, request):
            return d
        return finish_without_route(d, body.get("model") or "", self.policy.providers)

    def decide_tool(self, server, tool, args, headers, key, ip, now) -> ToolDecision:
        request = {"server": server, "tool": tool, "args": args, "headers": headers, "key": key,
                   "ip": ip, "now": now}
        d = ToolDecision()
        self.walk(d, self.policy.tool_rules, request)
        return d

    def walk(self, d, rules, request) -> bool:
        """Apply every rule whose condition holds, in order; True when one ended the walk."""
        d.matched = []
        for rule in rules:
            if rule.when is not None and not self.eval(rule.when, request):
                continue
            d.matched.append(rule.name)
            for action in rule.actions:
                if self.apply(d, action, request):
                    d.rule = rule.name
                    return True
        return False

    def apply(self, d: Decision, a, request) -> bool:
        """Carry out one action; True when it ends the walk."""
        values = tuple(self.eval(e, request) for e in a.by)
        if a.kind == "hide":
            d.hide = True
            return True
        if a.kind == "deny":
            d.deny = a.value
            return True
        if a.kind == "route":
            d.route = a.value
            if a.sticky:
                d.route_by = {node_id: tuple(self.eval(e, request) for e in exprs)
                              for node_id, exprs in a.sticky}
            return True
        if a.kind == "limit":
            d.limits = d.limits + ((a.value, values),)
        elif a.kind == "cache":
            d.cache, d.cache_by = a.value, values
        elif a.kind == "tag":
            d.tags = d.tags + (a.value,)
        else:
            setattr(d, a.kind, a.value)
        return False

    def eval(self, e: ast.Expr, request):
        if isinstance(e, ast.Literal):
            return e.value
        if isinstance(e, ast.Field):
            return extractor(*e.key).read(request)
        if isinstance(e, ast.ListLit):
            return [i.value for i in e.items]
        if isinstance(e, ast.Not):
            return not self.eval(e.operand, request)
        if isinstance(e, ast.And):
            return all(self.eval(o, request) for o in e.operands)
        if isinstance(e, ast.Or):
            return any(self.eval(o, request) for o in e.operands)
        return self.compare(e, request)

    def compare(self, e: ast.Compare, request) -> bool:
        left = self.eval(e.left, request)
        right = self.eval(e.right, request)
        if left is None or right is None:
            return False  # a comparison with a missing value is false
        op = e.op
        if is_cidr_test(e):
            inside = cidr_matcher(tuple(right))(left)
            return inside if op == "in" else not inside
        if op == "in":
            return left in right
        if op == "not in":
            return left not in right
        if op == "matches":
            return self.policy.regexes[right].search(left) is not None
        if op == "contains":
            return right in left
        if op == "starts_with":
            return left.startswith(right)
        if op == "ends_with":
            return left.endswith(right)
        if op == "==":
            return left == right
        if op == "!=":
            return left != right
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
        if op == ">":
            return left > right
        return left >= right
