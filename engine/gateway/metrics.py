"""Counters and histograms for /metrics, rendered in the Prometheus text format.

Names follow Prometheus (unit suffixes, `_total` on counters) and, where one exists, the
OpenTelemetry GenAI semantic conventions as Prometheus spells them (`gen_ai.client.token.usage`
is `gen_ai_client_token_usage`). Label values come from the policy, never from clients: a route
the policy does not name (a pass-through model) counts as `provider/other`, a requested model it
does not name as `other`, so the series stay bounded whatever clients send.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter

OTHER = "other"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The boundaries the GenAI conventions ask for.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_GENAI = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")


class Histogram:
    """One histogram family: per label tuple, bucket counts (not cumulative), sum and count."""

    __slots__ = ("bounds", "series")

    def __init__(self, bounds: tuple):
        self.bounds = bounds
        self.series: dict[tuple, list] = {}

    def observe(self, labels: tuple, value: float) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [[0] * (len(self.bounds) + 1), 0.0]
        s[0][bisect_left(self.bounds, value)] += 1
        s[1] += value

    def render(self, out: list[str], name: str, help_text: str, names: tuple[str, ...]) -> None:
        out += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for labels, (counts, total_sum) in sorted(self.series.items()):
            pairs = "".join(f'{n}="{_esc(v)}",' for n, v in zip(names, labels))
            total = 0
            for bound, n in zip(self.bounds, counts):
                total += n
                out.append(f'{name}_bucket{{{pairs}le="{bound}"}} {total}')
            total += counts[-1]
            out.append(f'{name}_bucket{{{pairs}le="+Inf"}} {total}')
            bare = pairs.rstrip(",")
            out.append(f"{name}_sum{{{bare}}} {total_sum:.6f}")
            out.append(f"{name}_count{{{bare}}} {total}")


class Metrics:
    def __init__(self):
        self.requests: Counter = Counter()       # (route, status, cache)
        self.upstream_calls: Counter = Counter()  # (provider, outcome)
        self.limited: Counter = Counter()         # (rule,)
        self.tags: Counter = Counter()            # (tag,)
        self.reloads: Counter = Counter()         # (result,)
        self.tool_calls: Counter = Counter()      # (server, decision, status): calls at /mcp
        self.tool_seconds: Counter = Counter()    # (server,): their time
        self.cache: Counter = Counter()           # (result,): hit | miss
        self.cost: Counter = Counter()            # (key, provider, model) -> USD
        self.hedged: Counter = Counter()          # (outcome,): started | won | cancelled
        self.retry_budget: Counter = Counter()    # (budget,): extra attempts a retry budget refused
        self.pool_calls: Counter = Counter()      # (provider, pool key name, outcome): key pools
        self.pool_tokens: Counter = Counter()     # (provider, pool key name)
        self.latency = [0] * (len(_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.duration = Histogram(DURATION_BUCKETS)   # (operation, provider, model, error_type)
        self.tokens = Histogram(TOKEN_BUCKETS)        # (operation, provider, model, token_type)
        self.first_chunk = Histogram(DURATION_BUCKETS)  # (operation, provider, model)
        self.routes: dict[str, str] = {"": ""}   # route -> its label; other routes: provider/other
        self.models: frozenset[str] = frozenset()  # requested model names the policy knows
        self.providers: frozenset[str] = frozenset()
        self.loaded_at = 0.0

    def know(self, models, providers, requested=()) -> None:
        """The routes, requested models and providers the live policy names: the only label
        values (set on each load, which is also the last successful reload)."""
        self.routes = {m: m for m in models if not m.endswith("/*")}
        self.routes[""] = ""
        self.models = frozenset(requested) | frozenset(self.routes)
        self.providers = frozenset(providers)
        self.loaded_at = time.time()

    def route_label(self, route: str) -> str:
        label = self.routes.get(route)
        if label is None:
            provider = route.partition("/")[0]
            label = f"{provider}/{OTHER}" if provider in self.providers else OTHER
        return label

    def request(self, route: str, status: int, cache: str, seconds: float, tags=()) -> None:
        self.requests[(self.route_label(route), status, cache)] += 1
        for tag in tags:
            self.tags[tag] += 1
        self.latency_sum += seconds
        self.latency[bisect_left(_BUCKETS, seconds)] += 1

    def operation(self, call, status: int, seconds: float, usage: dict | None, price) -> None:
        """The GenAI series of one finished model request (`price`: the answering model's, or None)."""
        provider, _, model = call.route.partition("/")
        if provider not in self.providers:
            provider = OTHER
        requested = call.body.get("model")
        requested = requested if requested in self.models else OTHER
        op = call.kind
        self.duration.observe((op, provider, requested, "" if status < 400 else str(status)), seconds)
        if call.cache == "HIT" or call.cache == "HIT-SEMANTIC":
            self.cache["hit" if call.cache == "HIT" else "semantic_hit"] += 1
            return   # answered from the cache: no tokens spent, nothing paid
        if call.cache == "MISS":
            self.cache["miss"] += 1
        if call.ttft is not None:
            self.first_chunk.observe((op, provider, requested), call.ttft)
        if not usage:
            return
        prompt = _count(usage, "prompt_tokens", "input_tokens")
        completion = _count(usage, "completion_tokens", "output_tokens")
        self.tokens.observe((op, provider, requested, "input"), prompt)
        if op != "embeddings":
            self.tokens.observe((op, provider, requested, "output"), completion)
        if price is not None:
            route = self.route_label(call.route).partition("/")[2] or OTHER
            self.cost[(call.key, provider, route)] += (prompt * price.input + completion * price.output) / 1e6

    def upstream(self, provider: str, outcome: str) -> None:
        self.upstream_calls[(provider, outcome)] += 1

    def tool_call(self, server: str, decision: str, status: str, seconds: float) -> None:
        """One tools/call at /mcp (server names come from the policy; an unknown one is 'other')."""
        server = server if server in self.tool_servers else OTHER
        self.tool_calls[(server, decision, status)] += 1
        self.tool_seconds[(server,)] += seconds

    tool_servers: frozenset = frozenset()

    def render(self, health: dict | None = None, version: str = "") -> str:
        out: list[str] = []
        _counter(out, "edgerules_requests_total", "Requests answered, by route, status and cache.",
                 ("route", "status", "cache"), self.requests)
        _counter(out, "edgerules_upstream_calls_total", "Upstream attempts, by provider and outcome.",
                 ("provider", "outcome"), self.upstream_calls)
        _counter(out, "edgerules_limited_total", "Requests refused or rerouted by a limit, by rule.",
                 ("rule",), self.limited)
        _counter(out, "edgerules_tool_calls_total", "Tool calls at /mcp, by server, decision (call, denied, "
                 "limited, unknown) and status (ok, error, refused, failed, unavailable).",
                 ("server", "decision", "status"), self.tool_calls)
        _counter(out, "edgerules_tool_call_seconds_total", "Time spent answering tool calls, by server.",
                 ("server",), self.tool_seconds, "{:.6f}")
        _counter(out, "edgerules_tagged_requests_total", "Requests by tag.", ("tag",), self.tags)
        _counter(out, "edgerules_cache_lookups_total",
                 "Response cache lookups, by result (hit, semantic_hit, miss, embedding_error).",
                 ("result",), self.cache)
        _counter(out, "edgerules_cost_usd_total", "Spend in USD from the providers' price tables, by key, "
                 "provider and answering model.", ("key", "gen_ai_provider_name", "gen_ai_response_model"),
                 self.cost, "{:.9f}")
        _counter(out, "edgerules_pool_key_calls_total", "Upstream calls by the key of a provider's key pool "
                 "(its name or place, never its value) and outcome (ok, 429, 401, ...).",
                 ("provider", "pool_key", "outcome"), self.pool_calls)
        _counter(out, "edgerules_pool_key_tokens_total", "Tokens spent by the key of a provider's key pool.",
                 ("provider", "pool_key"), self.pool_tokens)
        _counter(out, "edgerules_hedged_total", "Hedged attempts: started after the delay, won the race, "
                 "cancelled by a faster one.", ("outcome",), self.hedged)
        _counter(out, "edgerules_retry_budget_exhausted_total", "Retries, fallbacks and hedges refused by a "
                 "retry budget, by budget (gateway or provider).", ("budget",), self.retry_budget)
        _counter(out, "edgerules_policy_reloads_total", "Policy loads, by result.", ("result",), self.reloads)
        out += ["# HELP edgerules_policy_last_reload_success_timestamp_seconds When the live policy was loaded.",
                "# TYPE edgerules_policy_last_reload_success_timestamp_seconds gauge",
                f"edgerules_policy_last_reload_success_timestamp_seconds {self.loaded_at:.3f}"]
        if version:
            out += ["# HELP edgerules_policy_info The live policy's version.", "# TYPE edgerules_policy_info gauge",
                    f'edgerules_policy_info{{version="{_esc(version)}"}} 1']
        if health is not None:
            out += ["# HELP edgerules_provider_open 1 while the provider's circuit is open.",
                    "# TYPE edgerules_provider_open gauge"]
            out += [f'edgerules_provider_open{{provider="{_esc(n)}"}} {int(h["open"])}' for n, h in health.items()]
            out += ["# HELP edgerules_provider_failures Consecutive failures counted by the provider's circuit.",
                    "# TYPE edgerules_provider_failures gauge"]
            out += [f'edgerules_provider_failures{{provider="{_esc(n)}"}} {h["failures"]}' for n, h in health.items()]
        out += ["# HELP edgerules_request_seconds Time to answer (to the first byte for streams).",
                "# TYPE edgerules_request_seconds histogram"]
        total = 0
        for bound, n in zip(_BUCKETS, self.latency):
            total += n
            out.append(f'edgerules_request_seconds_bucket{{le="{bound}"}} {total}')
        total += self.latency[-1]
        out.append(f'edgerules_request_seconds_bucket{{le="+Inf"}} {total}')
        out.append(f"edgerules_request_seconds_sum {self.latency_sum:.6f}")
        out.append(f"edgerules_request_seconds_count {total}")
        self.duration.render(out, "gen_ai_client_operation_duration_seconds",
                             "GenAI operation duration (to the last byte for streams).", _GENAI + ("error_type",))
        self.tokens.render(out, "gen_ai_client_token_usage", "Input and output tokens per operation.",
                           _GENAI + ("gen_ai_token_type",))
        self.first_chunk.render(out, "gen_ai_client_operation_time_to_first_chunk_seconds",
                                "Time to the first chunk of a streamed answer.", _GENAI)
        return "\n".join(out) + "\n"


def _count(usage: dict, *names: str) -> int:
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and value >= 0:
            return value
    return 0


def _counter(out: list[str], name: str, help_text: str, labels: tuple[str, ...], counter: Counter,
             number: str = "{}") -> None:
    """One counter family; a counter with one label is keyed by the bare value."""
    out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for key, n in sorted(counter.items()):
        values = key if isinstance(key, tuple) else (key,)
        pairs = ",".join(f'{label}="{_esc(value)}"' for label, value in zip(labels, values))
        out.append(f"{name}{{{pairs}}} {number.format(n)}")


def _esc(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
