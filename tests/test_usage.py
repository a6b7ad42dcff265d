"""Usage and spend from the request log through a real gateway, on SQLite and on PostgreSQL: the
sums of /admin/usage equal the sums of the rows, `edgerules usage` says the same, and budgets show
what is left (x-ratelimit-*-cost, GET /admin/limits)."""
from __future__ import annotations

import subprocess
from collections import defaultdict

import orjson
import pytest

from gw import start_gateway
from procs import EDGERULES, wait_until
from test_request_log import ALICE, BOB, chat, logged, policy  # noqa: F401 (policy is a fixture)

SUMMED = ("requests", "errors", "cache_hits", "input_tokens", "output_tokens", "cost_usd")

LIMITS = """
provider up {
    url "{url}"
    price m input 100 output 200
}
key alice { secret "{alice}" }
key bob   { secret "{bob}" }
rule budget { limit cost 0.5 per 1h by key  limit requests 100 per 1m  tag "budgeted" }
rule everything { route up/m }
"""


def send_mix(gw) -> int:
    """Requests of every kind from two keys; returns how many."""
    sent = 0
    for i in range(3):
        assert chat(gw, content=f"alice {i} " + "word " * i, headers={"x-team": "red"}).status_code == 200
        assert chat(gw, key=BOB, content=f"bob {i}").status_code == 200
        sent += 2
    assert chat(gw, test="deny").status_code == 403
    assert chat(gw, test="broken").status_code == 502
    assert chat(gw, test="cached").status_code == 200 and chat(gw, test="cached").status_code == 200
    assert gw.chat("up/m", headers={"authorization": "Bearer sk-wrong-key-0000000"}).status_code == 401
    return sent + 5


def sums_of(rows, group_by):
    out = defaultdict(lambda: defaultdict(float))
    for row in rows:
        keys = [(row[g] if g != "tag" else None) for g in group_by]
        group = out[tuple(keys)]
        group["requests"] += 1
        group["errors"] += row["status"] >= 400
        group["cache_hits"] += row["cache"] == "HIT"
        for name in ("input_tokens", "output_tokens", "cost_usd"):
            group[name] += row[name] or 0
    return out


def test_usage_sums_equal_the_sums_of_the_rows(upstream, store, tmp_path):
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store)
    try:
        total = send_mix(gw)
        rows = logged(gw, total)
        assert len(rows) == total
        for group_by in (["key", "model"], ["provider", "status"], []):
            answer = gw.http.get("/admin/usage", params={"group_by": ",".join(group_by), "since": "1h"}).json()
            expected = sums_of(rows, group_by)
            got = {tuple(r[g] for g in group_by): r for r in answer["data"]}
            assert set(got) == set(expected)
            for group, sums in expected.items():
                for name in SUMMED:
                    assert got[group][name] == pytest.approx(sums[name]), (group, name)
                assert got[group]["p50_ms"] <= got[group]["p95_ms"]
        everything = gw.http.get("/admin/usage").json()["data"][0]
        latencies = sorted(r["latency_ms"] for r in rows)
        assert everything["p50_ms"] == pytest.approx(latencies[(len(latencies) + 1) // 2 - 1])
        assert everything["p95_ms"] == pytest.approx(latencies[-(-len(latencies) * 95 // 100) - 1])
        assert everything["cost_usd"] > 0 and everything["errors"] == 3 and everything["cache_hits"] == 1

        by_tag = {r["tag"]: r for r in gw.http.get("/admin/usage", params={"group_by": "tag"}).json()["data"]}
        assert by_tag["red"]["requests"] == 3 and by_tag[None]["requests"] == total - 3
        future = gw.http.get("/admin/usage", params={"since": "2100-01-01T00:00:00Z"}).json()["data"]
        assert future == []

        bad = gw.http.get("/admin/usage", params={"group_by": "colour"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"
        bad = gw.http.get("/admin/usage", params={"since": "last tuesday"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"

        out = subprocess.run([EDGERULES, "usage", "--by", "key,model", "--since", "1h", "--json", "--store", store],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        api = gw.http.get("/admin/usage", params={"group_by": "key,model", "since": "1h"}).json()["data"]
        strip = lambda rows: sorted((r["key"], r["model"], *(r[n] for n in SUMMED)) for r in rows)  # noqa: E731
        assert strip(orjson.loads(out.stdout)) == strip(api)
        table = subprocess.run([EDGERULES, "usage", "--by", "key", "--store", store], capture_output=True,
                               text=True, timeout=60)
        assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["key", "requests", "errors"]
        assert any(line.startswith("bob ") for line in table.stdout.splitlines())
    finally:
        gw.stop()


def test_budgets_show_what_is_left(upstream, tmp_path):
    text = (LIMITS.replace("{url}", upstream.url).replace("{alice}", ALICE).replace("{bob}", BOB))
    gw = start_gateway(text, tmp_path / "gw", "--no-watch", "--log-store", "none")
    try:
        first = chat(gw)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-cost"] == "0.5"
        left = float(first.headers["x-ratelimit-remaining-cost"])
        assert 0 < left < 0.5 and first.headers["x-ratelimit-reset-cost"]
        assert first.headers["x-ratelimit-limit-requests"] == "100"
        spent = float(first.headers["x-edgerules-cost"])
        second = chat(gw)
        # the first request settled on its real cost; the second holds its estimate meanwhile
        assert float(second.headers["x-ratelimit-remaining-cost"]) < 0.5 - spent
        assert chat(gw, key=BOB).status_code == 200

        counters = gw.http.get("/admin/limits").json()["data"]
        cost = {tuple(c["by"]): c for c in counters if c["kind"] == "cost"}
        assert set(cost) == {("alice",), ("bob",)}
        alice = cost[("alice",)]
        costs = [float(r.headers["x-edgerules-cost"]) for r in (first, second)]
        assert alice["limit"] == 0.5 and alice["used"] == pytest.approx(sum(costs), abs=1e-9)
        assert alice["remaining"] == pytest.approx(0.5 - sum(costs), abs=1e-9)
        assert alice["rule"] == "budget" and alice["window_seconds"] == 3600 and alice["reset_in_seconds"] > 0
        requests = [c for c in counters if c["kind"] == "requests"]
        assert len(requests) == 1 and requests[0]["used"] == 3 and requests[0]["remaining"] == 97
    finally:
        gw.stop()
