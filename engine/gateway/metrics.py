"""Counters for /metrics, rendered in the Prometheus text format.

Label values come from the policy, never from clients: a route the policy does not name (a
pass-through model) counts as `provider/other`, so the series stay bounded whatever clients send.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter

OTHER = "other"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self):
        self.requests: Counter = Counter()       # (route, status, cache)
        self.upstream_calls: Counter = Counter()  # (provider, outcome)
        self.limited: Counter = Counter()         # (rule,)
        self.tags: Counter = Counter()            # (tag,)
        self.reloads: Counter = Counter()         # (result,)
        self.latency = [0] * (len(_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.routes: dict[str, str] = {"": ""}   # route -> its label; other routes: provider/other
        self.providers: frozenset[str] = frozenset()

    def know(self, models, providers) -> None:
        """The routes and providers the live policy names: the only label values (set on each load)."""
        self.routes = {m: m for m in models if not m.endswith("/*")}
        self.routes[""] = ""
        self.providers = frozenset(providers)

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

    def upstream(self, provider: str, outcome: str) -> None:
        self.upstream_calls[(provider, outcome)] += 1

    def render(self, extra: list[str] | None = None) -> str:
        out: list[str] = []
        _counter(out, "edgerules_requests_total", "Requests answered, by route, status and cache.",
                 ("route", "status", "cache"), self.requests)
        _counter(out, "edgerules_upstream_calls_total", "Upstream attempts, by provider and outcome.",
                 ("provider", "outcome"), self.upstream_calls)
        _counter(out, "edgerules_limited_total", "Requests refused or rerouted by a limit, by rule.",
                 ("rule",), self.limited)
        _counter(out, "edgerules_tagged_requests_total", "Requests by tag.", ("tag",), self.tags)
        _counter(out, "edgerules_policy_reloads_total", "Policy loads, by result.", ("result",), self.reloads)
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
        out.extend(extra or [])
        return "\n".join(out) + "\n"


def _counter(out: list[str], name: str, help_text: str, labels: tuple[str, ...], counter: Counter) -> None:
    """One counter family; a counter with one label is keyed by the bare value."""
    out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for key, n in sorted(counter.items()):
        values = key if isinstance(key, tuple) else (key,)
        pairs = ",".join(f'{label}="{_esc(value)}"' for label, value in zip(labels, values))
        out.append(f"{name}{{{pairs}}} {n}")


def _esc(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
