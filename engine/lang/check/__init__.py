"""The checker: turns a parsed Program into a CheckedPolicy, collecting every diagnostic instead of
stopping at the first.

One concern a module: declarations.py (providers, keys), rules.py (rule order, actions, limits,
retries, targets), expressions.py (fields, types, regexes); checked.py holds what comes out.
"""
from __future__ import annotations

import os
from typing import Mapping

from .. import ast
from ..errors import Diagnostic
from ..source import Location
from ..spec import ProviderSpec
from .budgets import check_top_budgets
from .checked import CheckedAction, CheckedPolicy, CheckedRule
from .declarations import DEFAULT_URLS, FORMATS, DeclarationChecks
from .expressions import ExpressionChecks
from .lint import lint
from .rules import RuleChecks
from .tools import ToolChecks

__all__ = ["check_program", "CheckedAction", "CheckedPolicy", "CheckedRule", "FORMATS", "DEFAULT_URLS"]


def check_program(program: ast.Program, env: Mapping[str, str] | None = None
                  ) -> tuple[CheckedPolicy, list[Diagnostic]]:
    checker = _Checker(os.environ if env is None else env)
    return checker.run(program), checker.diagnostics


class _Checker(ToolChecks, DeclarationChecks, RuleChecks, ExpressionChecks):
    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.diagnostics: list[Diagnostic] = []
        self.regexes: dict[str, object] = {}
        self.split_ids = 0
        self.body_kinds: dict[int, str] = {}   # id(body Field) -> the type its comparison expects
        self.providers: dict[str, ProviderSpec] = {}
        self.servers: dict = {}

    def error(self, code: str, message: str, loc: Location | None, hint: str | None = None):
        self.diagnostics.append(Diagnostic(code, message, loc, "error", hint))

    def warn(self, code: str, message: str, loc: Location | None, hint: str | None = None):
        self.diagnostics.append(Diagnostic(code, message, loc, "warning", hint))

    def note(self, code: str, message: str, loc: Location | None, hint: str | None = None):
        """Neither error nor warning: how the checker reads a line (`--strict` leaves notes alone)."""
        self.diagnostics.append(Diagnostic(code, message, loc, "note", hint))

    def run(self, program: ast.Program) -> CheckedPolicy:
        self.providers = self._providers(program.providers)
        self.servers = self._servers(program.servers)
        keys = self._keys(program.keys)
        self._key_tools(program.keys)
        model_rules = tuple(r for r in program.rules if not r.for_tools)
        rules = self._rules(model_rules)
        tool_rules = self._tool_rules(tuple(r for r in program.rules if r.for_tools), model_rules)
        self._warn_missing_prices(rules)
        lint(self, program, rules, tool_rules)
        if not (rules or self.providers or keys or self.servers or tool_rules):
            # Often a file caught half-written (an editor's truncate-then-write), rarely meant.
            self.warn("empty-policy", "the policy is empty: no rule, provider or key; every request "
                      "is answered 404", None,
                      hint="a hot reload refuses a policy that drops every rule, provider or key "
                           "(POST /admin/reload?force=1 installs it anyway)")
        checked = CheckedPolicy(self.providers, keys, rules, self.regexes, self.servers, tool_rules)
        checked.retry_budget = check_top_budgets(self, program.budgets)
        return checked
