"""The syntax tree of a policy: frozen, slotted nodes that carry their source location."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .source import Location, pickle_by_init


# ---- expressions ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Literal:
    value: object            # str | int | float | bool; a duration is its seconds as float
    type: str                # string | number | bool | duration
    loc: Location


@dataclass(frozen=True, slots=True)
class ListLit:
    items: tuple[Literal, ...]
    loc: Location


@dataclass(frozen=True, slots=True)
class Field:
    name: str                # model, header, metadata, ...
    arg: str | None          # header("x-plan") -> "x-plan"; metadata.region -> "region"
    form: str                # plain | call | dotted: how it was written
    loc: Location
    kind: str | None = None  # body.PATH: the type its comparison expects, set by the checker

    @property
    def key(self) -> tuple[str, str | None]:
        """What the compiled code extracts once: a body field typed two ways is two values."""
        return (self.name, self.arg if self.kind is None else f"{self.arg}#{self.kind}")

    def text(self) -> str:
        if self.form == "call":
            return f'{self.name}("{self.arg}")'
        if self.form == "dotted":
            return f"{self.name}.{self.arg}"
        return self.name


@dataclass(frozen=True, slots=True)
class Compare:
    op: str                  # == != < <= > >= in "not in" matches contains starts_with ends_with
    left: "Expr"
    right: "Expr"
    loc: Location


@dataclass(frozen=True, slots=True)
class Not:
    operand: "Expr"
    loc: Location


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple["Expr", ...]
    loc: Location


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple["Expr", ...]
    loc: Location


Expr = Union[Literal, ListLit, Field, Compare, Not, And, Or]


# ---- targets --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TargetRef:
    provider: str
    model: str | None
    loc: Location


@dataclass(frozen=True, slots=True)
class FallbackT:
    members: tuple["TargetNode", ...]
    loc: Location


@dataclass(frozen=True, slots=True)
class SplitT:
    weights: tuple[float, ...]
    members: tuple["TargetNode", ...]
    by: tuple[Expr, ...]
    loc: Location


@dataclass(frozen=True, slots=True)
class FastestT:
    members: tuple["TargetNode", ...]
    loc: Location


@dataclass(frozen=True, slots=True)
class HedgeT:
    """`hedge [a, b] after 400ms` (delay) or `after p95` (percentile of the member's latency)."""

    members: tuple["TargetNode", ...]
    delay: float | None          # seconds; None when written as a percentile
    percentile: float | None     # 95 for `p95`
    after_loc: Location
    loc: Location


TargetNode = Union[TargetRef, FallbackT, SplitT, FastestT, HedgeT]


# ---- actions --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Deny:
    status: float | None     # None: written without a status (a tool rule's deny)
    message: str | None
    loc: Location
    status_loc: Location


@dataclass(frozen=True, slots=True)
class Route:
    target: TargetNode
    loc: Location


@dataclass(frozen=True, slots=True)
class Limit:
    kind: str                # requests | tokens | cost
    amount: float
    amount_loc: Location
    window: float            # seconds
    window_loc: Location
    by: tuple[Expr, ...]
    else_route: TargetNode | None
    loc: Location


@dataclass(frozen=True, slots=True)
class Cache:
    ttl: float | None        # None: cache off
    by: tuple[Expr, ...]
    loc: Location
    shared: bool = False     # `shared`: one answer for every key and user
    semantic: "SemanticCache | None" = None   # `cache semantic ...`


@dataclass(frozen=True, slots=True)
class SemanticCache:
    """`cache semantic 0.95 ttl 1h using PROVIDER/MODEL`: the threshold and the embeddings model."""

    threshold: float
    threshold_loc: Location
    provider: str
    model: str
    using_loc: Location


@dataclass(frozen=True, slots=True)
class RetryCode:
    text: str                # "429", "5xx", "timeout", "connect"
    loc: Location


@dataclass(frozen=True, slots=True)
class Retry:
    attempts: float
    attempts_loc: Location
    backoff: str | None
    delay: float | None
    max_delay: float | None
    jitter: bool
    on: tuple[RetryCode, ...] | None
    loc: Location
    repeated: tuple[tuple[str, Location], ...] = ()   # options written more than once


@dataclass(frozen=True, slots=True)
class Timeout:
    seconds: float
    loc: Location


@dataclass(frozen=True, slots=True)
class Deadline:
    seconds: float
    loc: Location


@dataclass(frozen=True, slots=True)
class Tag:
    label: str
    loc: Location


@dataclass(frozen=True, slots=True)
class Log:
    level: str
    loc: Location


@dataclass(frozen=True, slots=True)
class Hide:
    """A tool rule's action: the tool is not listed for the caller, and refused if called."""

    loc: Location


Action = Union[Deny, Route, Limit, Cache, Retry, Timeout, Deadline, Tag, Log, Hide]


# ---- statements -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Value:
    """A string written literally or as env("NAME")."""

    kind: str                # string | env
    text: str
    loc: Location


@dataclass(frozen=True, slots=True)
class Setting:
    name: str                # url | api_key | format | timeout | cooldown | price
    args: tuple              # the setting's values, as parsed
    loc: Location


@dataclass(frozen=True, slots=True)
class PoolLimit:
    """`limit requests 500 per 1m` on one key of a pool."""

    kind: str                # requests | tokens (the checker refuses the others)
    amount: int | float
    amount_loc: Location
    window: float            # seconds
    window_loc: Location
    loc: Location


@dataclass(frozen=True, slots=True)
class PoolKey:
    """One key of `api_key [...]`: its value, an optional `as NAME`, its own limits."""

    value: Value
    name: str | None
    name_loc: Location | None
    limits: tuple[PoolLimit, ...]
    loc: Location


@dataclass(frozen=True, slots=True)
class KeyPool:
    """`api_key [k1, k2, ...] [pick STRATEGY]`: the only arg of an api_key Setting written as a list."""

    members: tuple[PoolKey, ...]
    pick: str | None
    pick_loc: Location | None
    loc: Location


@dataclass(frozen=True, slots=True)
class ProviderDecl:
    name: str
    settings: tuple[Setting, ...]
    loc: Location


@dataclass(frozen=True, slots=True)
class KeyDecl:
    name: str
    settings: tuple[Setting, ...]
    loc: Location


@dataclass(frozen=True, slots=True)
class ServerDecl:
    """`mcp NAME { ... }` or `api NAME { ... }`: where tools come from."""

    kind: str                # mcp | api
    name: str
    settings: tuple[Setting, ...]
    loc: Location


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    when: Expr | None
    actions: tuple[Action, ...]
    loc: Location
    for_tools: bool = False  # `rule NAME for tools { ... }`: decides tool calls, not model requests


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """`retry budget 20% min 10/s`: at top level (provider None) or inside a provider block."""

    percent: float
    percent_loc: Location
    floor: float | None          # the `min` retries per second
    floor_loc: Location | None
    unit: str | None             # what follows `/`: must be `s`
    loc: Location

    name = "retry_budget"        # read like a provider Setting's name when written in a provider


@dataclass(frozen=True, slots=True)
class Program:
    providers: tuple[ProviderDecl, ...]
    keys: tuple[KeyDecl, ...]
    rules: tuple[Rule, ...]
    servers: tuple[ServerDecl, ...] = ()
    budgets: tuple[RetryBudget, ...] = ()     # top-level `retry budget` statements

    def merge(self, other: "Program") -> "Program":
        return Program(self.providers + other.providers, self.keys + other.keys,
                       self.rules + other.rules, self.servers + other.servers,
                       self.budgets + other.budgets)


pickle_by_init(globals())
