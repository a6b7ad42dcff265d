"""What clients choose (model names, user and header values) does not grow the gateway's memory or
its /metrics: labels come from the policy, memo caches and per-model statistics are bounded."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from gw import start_gateway

POLICY = """
provider demo { format echo }
provider other { format echo }

rule bots   { when user matches "^bot-[a-z]+"  tag "bot" }
rule models { when model matches "^demo/m[0-9]"  tag "numbered" }
rule named  { when model == "named"  route demo/named }
"""
FLOOD = 10_000
WARMUP = 1_000
PAD = "x" * 150   # long names make any per-name leftover visible in RSS
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = start_gateway(POLICY, tmp_path_factory.mktemp("bounded"), "--no-watch", "--log-level", "warning")
    yield gw
    gw.stop()


def rss(pid: int) -> int:
    """VmRSS of a process, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def series(gw) -> list[str]:
    text = gw.http.get("/metrics").text
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def send_all(gw, bodies, concurrency: int = 8) -> dict[int, int]:
    """POST every body (a bounded list) with a few connections; returns the count of each status."""
    statuses: dict[int, int] = {}

    async def run():
        queue = iter(bodies)
        async with httpx.AsyncClient(base_url=gw.url, trust_env=False, timeout=30.0) as client:
            async def worker():
                for body in queue:
                    resp = await client.post("/v1/chat/completions", json=body)
                    statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    asyncio.run(run())
    return statuses


def chat(model: str, user: str = "u") -> dict:
    return {"model": model, "user": user, "messages": [{"role": "user", "content": "hi"}]}


def test_distinct_model_names_leave_series_and_rss_bounded(gateway):
    warm = [chat(f"demo/m{i}-warm-{PAD}") for i in range(WARMUP)] + [chat(f"other/warm-{i}") for i in range(10)]
    assert send_all(gateway, warm) == {200: len(warm)}    # both providers: every label value seen once
    before, before_series = rss(gateway.pid), len(series(gateway))
    names = [f"demo/m{i}-{PAD}" for i in range(FLOOD)] + [f"other/{i}-{PAD}" for i in range(FLOOD // 10)]
    assert send_all(gateway, [chat(n) for n in names]) == {200: len(names)}
    after, lines = rss(gateway.pid), series(gateway)
    grown = (after - before) / MiB
    print(f"\n{len(names)} distinct model names: {len(lines)} series (was {before_series}), "
          f"RSS {before / MiB:.1f} -> {after / MiB:.1f} MiB ({grown:+.1f})")
    requests_series = [line for line in lines if line.startswith("edgerules_requests_total{")]
    # The warm-up already produced every label value this policy can give (its routes, `other`),
    # so the flood adds no series at all; a few histogram buckets may fill in for the first time.
    assert len(lines) <= before_series + 40, sorted(set(lines))[:20]
    assert any('route="demo/other"' in line for line in requests_series), requests_series
    assert any('route="other/other"' in line for line in requests_series), requests_series
    assert not any(PAD in line for line in lines)
    assert grown < 6, f"RSS grew {grown:.1f} MiB over {len(names)} distinct model names"
    health = gateway.http.get("/admin/policy").json()["health"]
    kept = {name: len(h["latency_ms"]) for name, h in health.items()}
    assert all(n <= 256 for n in kept.values()), kept


def test_a_model_the_policy_names_keeps_its_own_label(gateway):
    assert gateway.chat("named").status_code == 200
    assert any('route="demo/named"' in line for line in series(gateway))


def test_distinct_long_values_read_by_a_regex_are_not_memoized(gateway):
    big = 256 * 1024
    bodies = [chat("named", user=f"bot-{chr(97 + i % 26)}{i:06d}".ljust(big, "z")) for i in range(40)]
    assert send_all(gateway, bodies, concurrency=2) == {200: 40}   # warm: allocator arenas
    before = rss(gateway.pid)
    for start in range(0, 300, 50):   # bounded: 300 distinct 256 KiB values, built 50 at a time
        bodies = [chat("named", user=f"bot-q{i:06d}".ljust(big, "z")) for i in range(start, start + 50)]
        assert send_all(gateway, bodies, concurrency=2) == {200: 50}
    after = rss(gateway.pid)
    grown = (after - before) / MiB
    print(f"\n300 distinct 256 KiB values under `matches`: RSS {before / MiB:.1f} -> {after / MiB:.1f} MiB "
          f"({grown:+.1f})")
    assert grown < 20, f"RSS grew {grown:.1f} MiB (the values total {300 * big / MiB:.0f} MiB)"
    assert any('tag="bot"' in line for line in series(gateway))
