"""What a compiled policy hands the gateway: providers, keys, targets, limits, cache and retry settings.

These are plain frozen values. The serving side imports this module, never the compiler.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .source import pickle_by_init

DEFAULT_TIMEOUT = 60.0
DEFAULT_COOLDOWN = 30.0
DEFAULT_FAILURES = 5
DEFAULT_DEADLINE = 300.0
DEFAULT_RETRY_CODES = frozenset({"429", "5xx", "timeout", "connect"})


@dataclass(frozen=True, slots=True)
class Price:
    input: float   # USD per 1M input tokens
    output: float  # USD per 1M output tokens


RETRY_BUDGET_WINDOW = 10.0   # seconds of requests a retry budget is a share of


@dataclass(frozen=True, slots=True)
class RetryBudgetSpec:
    """`retry budget 20% min 10/s`: retries and fallbacks may add at most `percent` of the
    requests of the last RETRY_BUDGET_WINDOW seconds, plus `floor` per second."""

    percent: float
    floor: float = 0.0

    def to_dict(self) -> dict:
        return {"percent": self.percent, "min_per_second": self.floor, "window": RETRY_BUDGET_WINDOW}


@dataclass(frozen=True, slots=True)
class PoolKey:
    """One key of a provider's key pool: its label in metrics, its value, its own limits."""

    name: str                                  # the `as NAME`, else its place in the list from 1
    secret: str = field(repr=False)
    requests: tuple[int, float] | None = None  # (amount, window seconds)
    tokens: tuple[int, float] | None = None


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    format: str = "openai"                 # openai | anthropic | azure | gemini | bedrock | echo
    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    cooldown: float = DEFAULT_COOLDOWN
    failures: int = DEFAULT_FAILURES
    prices: tuple[tuple[str, Price], ...] = ()
    # (name, value) sent on every call; values may come from env(...) and are redacted like keys
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    api_version: str | None = None         # azure: the api-version query parameter
    deployment: str | None = None          # azure: the deployment (default: the model name)
    region: str | None = None              # bedrock: the AWS region
    access_key: str | None = field(default=None, repr=False)   # bedrock: AWS access key id
    secret_key: str | None = field(default=None, repr=False)   # bedrock: AWS secret access key
    key_pool: tuple[PoolKey, ...] = field(default=(), repr=False)   # `api_key [...]`; api_key is its first
    key_pick: str = "most_room"            # most_room | round_robin
    retry_budget: RetryBudgetSpec | None = None   # `retry budget` in the provider block

    def price(self, model: str) -> Price | None:
        for name, price in self.prices:
            if name == model:
                return price
        return None

    def pool_to_dict(self) -> dict:
        """The key pool as `edgerules eval` shows it: names, limits and strategy, never a key."""
        def limits(key: PoolKey) -> dict:
            return {kind: {"amount": value[0], "window": value[1]}
                    for kind, value in (("requests", key.requests), ("tokens", key.tokens)) if value}
        return {"pick": self.key_pick, "keys": [{"name": k.name, "limits": limits(k)} for k in self.key_pool]}

    def client_identity(self) -> tuple:
        """What a pooled upstream client depends on; a change means a new client."""
        return (self.format, self.url, self.api_key, self.headers, self.api_version, self.deployment,
                self.region, self.access_key, self.secret_key, self.key_pool, self.key_pick)

    def secrets(self) -> tuple[str, ...]:
        """Every value of this provider that must never reach a client, a log or a metric."""
        return tuple(v for v in (self.api_key, self.access_key, self.secret_key, *(v for _, v in self.headers),
                                 *(k.secret for k in self.key_pool)) if v)


@dataclass(frozen=True, slots=True)
class KeySpec:
    name: str
    secret: str | None = field(default=None, repr=False)
    sha256: str | None = None
    tools: tuple[str, ...] | None = None   # globs of the SERVER__TOOL names it may see; None: all

    def sees_tool(self, name: str) -> bool:
        if self.tools is None:
            return True
        from fnmatch import fnmatchcase
        return any(fnmatchcase(name, glob) for glob in self.tools)


TOOL_SEPARATOR = "__"      # a tool is exposed as SERVER__TOOL


@dataclass(frozen=True, slots=True)
class McpSpec:
    """`mcp NAME { ... }`: an MCP server reached over streamable HTTP (or a built-in one)."""

    name: str
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    timeout: float = DEFAULT_TIMEOUT
    cooldown: float = DEFAULT_COOLDOWN
    failures: int = DEFAULT_FAILURES
    builtin: str | None = None             # `builtin echo`: served inside the gateway

    kind = "mcp"

    def secrets(self) -> tuple[str, ...]:
        return tuple(v for _, v in self.headers if v)

    def identity(self) -> tuple:
        """What an upstream session depends on; a change means a new session."""
        return (self.url, self.headers, self.builtin)


@dataclass(frozen=True, slots=True)
class ApiOperation:
    """One OpenAPI operation with an operationId: a tool named by it."""

    name: str                              # the operationId
    method: str                            # GET, POST, ...
    path: str                              # /invoices/{id}
    params: tuple[tuple[str, str], ...]    # (name, where: path | query | header)
    body: str                              # "": none; fields: the other arguments; value: arguments["body"]
    description: str
    input_schema: str                      # JSON text of the tool's input schema


@dataclass(frozen=True, slots=True)
class ApiSpec:
    """`api NAME { ... }`: an HTTP API described by an OpenAPI 3 document read at load time."""

    name: str
    url: str
    operations: tuple[ApiOperation, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    timeout: float = DEFAULT_TIMEOUT
    cooldown: float = DEFAULT_COOLDOWN
    failures: int = DEFAULT_FAILURES
    openapi: str = ""                      # the document's path, as resolved

    kind = "api"

    def secrets(self) -> tuple[str, ...]:
        return tuple(v for v in (self.api_key, *(v for _, v in self.headers)) if v)

    def identity(self) -> tuple:
        return (self.url, self.api_key, self.headers)

    def tool_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}{TOOL_SEPARATOR}{op.name}" for op in self.operations)


@dataclass(frozen=True, slots=True)
class Single:
    provider: str
    model: str | None = None   # None: the model as requested

    def to_dict(self, by: dict | None = None):
        return f"{self.provider}/{self.model}" if self.model is not None else self.provider


@dataclass(frozen=True, slots=True)
class Fallback:
    members: tuple["Target", ...]

    def to_dict(self, by: dict | None = None):
        return {"fallback": [m.to_dict(by) for m in self.members]}


@dataclass(frozen=True, slots=True)
class Split:
    weights: tuple[float, ...]
    members: tuple["Target", ...]
    sticky: bool = False   # `by ...` was written: the values are in Decision.route_by[id(self)]
    node_id: int = 0       # stable index of this split inside its policy

    def to_dict(self, by: dict | None = None):
        out = {"split": [{"weight": w, "target": m.to_dict(by)} for w, m in zip(self.weights, self.members)]}
        if self.sticky:
            out["by"] = list((by or {}).get(self.node_id, ()))
        return out


@dataclass(frozen=True, slots=True)
class Fastest:
    members: tuple["Target", ...]

    def to_dict(self, by: dict | None = None):
        return {"fastest": [m.to_dict(by) for m in self.members]}


@dataclass(frozen=True, slots=True)
class Hedge:
    """Send to the first member; if it has not started answering after the delay, also to the next."""

    members: tuple["Target", ...]
    delay: float = 0.0                 # seconds, when written as a duration
    percentile: float | None = None    # `after p95`: the member's recent latency percentile

    def to_dict(self, by: dict | None = None):
        after = f"p{self.percentile:g}" if self.percentile is not None else f"{self.delay * 1000:g}ms"
        return {"hedge": [m.to_dict(by) for m in self.members], "after": after}


Target = Union[Single, Fallback, Split, Fastest, Hedge]


def target_leaves(target: Target):
    """Every Single inside a target tree, in order."""
    if isinstance(target, Single):
        yield target
    else:
        for member in target.members:
            yield from target_leaves(member)


@dataclass(frozen=True, slots=True)
class LimitSpec:
    id: str                     # stable across reloads: "rule#index"
    rule: str
    kind: str                   # requests | tokens | cost
    amount: float
    window: int                 # seconds
    by: tuple[str, ...] = ()    # the `by` expressions as written, for display
    else_route: Target | None = None

    def to_dict(self, values: tuple = ()) -> dict:
        out = {"id": self.id, "rule": self.rule, "kind": self.kind, "amount": self.amount,
               "window": self.window, "by": list(self.by), "values": list(values)}
        out["else"] = self.else_route.to_dict() if self.else_route is not None else None
        return out


@dataclass(frozen=True, slots=True)
class CacheSpec:
    rule: str
    ttl: float | None            # None: `cache off`
    by: tuple[str, ...] = ()
    shared: bool = False         # False: the key's name and the body's `user` are part of the cache key
    semantic: "SemanticSpec | None" = None   # `cache semantic`: also answer prompts near a stored one

    @property
    def enabled(self) -> bool:
        return self.ttl is not None


@dataclass(frozen=True, slots=True)
class SemanticSpec:
    """`cache semantic THRESHOLD ttl T using PROVIDER/MODEL`."""

    threshold: float             # the least cosine similarity served, in (0, 1]
    provider: str                # the provider whose embeddings endpoint embeds prompts
    model: str

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "using": f"{self.provider}/{self.model}"}


@dataclass(frozen=True, slots=True)
class RetrySpec:
    attempts: int                      # retries after the first attempt, 1..5
    backoff: str = "exponential"       # constant | linear | exponential
    delay: float = 0.1
    max_delay: float = 5.0
    jitter: bool = False
    on: frozenset[str] = DEFAULT_RETRY_CODES

    def delay_for(self, k: int) -> float:
        """Delay before retry k (1-based), capped, before jitter."""
        if self.backoff == "constant":
            d = self.delay
        elif self.backoff == "linear":
            d = self.delay * k
        else:
            d = self.delay * (2 ** (k - 1))
        return min(d, self.max_delay)

    def retries_on(self, status: int | None, kind: str) -> bool:
        """kind: 'status', 'timeout' or 'connect'."""
        if kind != "status":
            return kind in self.on
        return str(status) in self.on or f"{status // 100}xx" in self.on

    def to_dict(self) -> dict:
        return {"attempts": self.attempts, "backoff": self.backoff, "delay": self.delay,
                "max": self.max_delay, "jitter": self.jitter, "on": sorted(self.on)}


pickle_by_init(globals())
