"""What the checker hands the code generator and the interpreter: rules whose actions carry the
runtime specs of spec.py."""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import ast
from ..source import Location, pickle_by_init
from ..spec import KeySpec, ProviderSpec


@dataclass(frozen=True, slots=True)
class CheckedAction:
    kind: str          # deny | route | limit | cache | retry | timeout | deadline | tag | log
    value: object      # (status, message) | Target | LimitSpec | CacheSpec | RetrySpec | float | str
    by: tuple = ()     # `by` expressions of a limit or cache
    sticky: tuple = () # route: ((split node_id, by expressions), ...) for every sticky split
    loc: Location | None = None

    @property
    def terminal(self) -> bool:
        return self.kind in ("deny", "route", "hide")

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
    servers: dict = field(default_factory=dict)        # name -> McpSpec | ApiSpec
    tool_rules: tuple[CheckedRule, ...] = ()            # `rule NAME for tools`
    retry_budget: object = None                         # RetryBudgetSpec of a top-level `retry budget`


pickle_by_init(globals())
