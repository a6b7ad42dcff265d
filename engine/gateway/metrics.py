"""Counters for /metrics, rendered in the Prometheus text format."""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter

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

    def request(self, route: str, status: int, cache: str, seconds: float, tags=()) -> None:
        self.requests[(route, status, cache)] += 1
        for tag in tags:
            self.tags[tag] += 1
        self.latency_sum += seconds
        self.latency[bisect_left(_BUCKETS, seconds)] += 1

    def upstream(self, provider: str, outcome: str) -> None:
        self.upstream_calls[(provider, outcome)] += 1

    def render(self, extra: list[str] | None = None) -> str:
        out = ["# HELP edgerules_requests_total Requests answered, by route, status and cache.",
               "# TYPE edgerules_requests_total counter"]
        for (route, status, cache), n in sorted(self.requests.items()):
            out.append(f'edgerules_requests_total{{route="{_esc(route)}",status="{status}",cache="{cache}"}} {n}')
        out += ["# HELP edgerules_upstream_calls_total Upstream attempts, by provider and outcome.",
                "# TYPE edgerules_upstream_calls_total counter"]
        for (provider, outcome), n in sorted(self.upstream_calls.items()):
            out.append(f'edgerules_upstream_calls_total{{provider="{_esc(provider)}",outcome="{outcome}"}} {n}')
        out += ["# HELP edgerules_limited_total Requests refused or rerouted by a limit, by rule.",
                "# TYPE edgerules_limited_total counter"]
        for rule, n in sorted(self.limited.items()):
            out.append(f'edgerules_limited_total{{rule="{_esc(rule)}"}} {n}')
        out += ["# HELP edgerules_tagged_requests_total Requests by tag.",
                "# TYPE edgerules_tagged_requests_total counter"]
        for tag, n in sorted(self.tags.items()):
            out.append(f'edgerules_tagged_requests_total{{tag="{_esc(tag)}"}} {n}')
        out += ["# HELP edgerules_policy_reloads_total Policy loads, by result.",
                "# TYPE edgerules_policy_reloads_total counter"]
        for result, n in sorted(self.reloads.items()):
            out.append(f'edgerules_policy_reloads_total{{result="{result}"}} {n}')
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


def _esc(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
