"""split, sticky split and fastest through a real `edgerules serve` and real upstreams (the pure
planning functions are tested in test_router.py)."""
from __future__ import annotations

import asyncio
from collections import Counter

import httpx

KEYS = [f"sk-routing-{i:02d}" for i in range(16)]


def key_block() -> str:
    return "".join(f'key k{i:02d} {{ secret "{secret}" }}\n' for i, secret in enumerate(KEYS))


async def routes_of(gw, requests: list[dict], concurrency: int = 8) -> list[str]:
    """The x-edgerules-route of each request ({"headers": ...}), sent `concurrency` at a time."""
    limit = asyncio.Semaphore(concurrency)
    body = {"model": "m", "messages": [{"role": "user", "content": "which one?"}]}

    async def one(http, headers):
        async with limit:
            resp = await http.post("/v1/chat/completions", json=body, headers=headers)
            assert resp.status_code == 200, resp.text
            return resp.headers["x-edgerules-route"]

    async with httpx.AsyncClient(base_url=gw.url, trust_env=False, timeout=60) as http:
        return await asyncio.gather(*(one(http, r.get("headers", {})) for r in requests))


def test_a_split_follows_its_weights(upstreams, gateways):
    a, b = upstreams(), upstreams()
    gw = gateways(f'provider a {{ url "{a.url}" }}\nprovider b {{ url "{b.url}" }}\n'
                  'rule r { route split [80% a/m, 20% b/m] }')
    n = 400
    counts = Counter(asyncio.run(routes_of(gw, [{}] * n)))
    assert set(counts) <= {"a/m", "b/m"}
    # Expected 80 for b, standard deviation 8: the bound is about five of them either side.
    assert 40 <= counts["b/m"] <= 125, counts
    assert a.stats()["chat"] == counts["a/m"] and b.stats()["chat"] == counts["b/m"]


def test_a_split_by_key_sends_each_key_to_one_member(upstreams, gateways):
    a, b = upstreams(), upstreams()
    gw = gateways(f'provider a {{ url "{a.url}" }}\nprovider b {{ url "{b.url}" }}\n' + key_block()
                  + 'rule r { route split [50% a/m, 50% b/m] by key }')
    requests = [{"headers": {"authorization": f"Bearer {secret}"}} for secret in KEYS for _ in range(6)]
    routes = asyncio.run(routes_of(gw, requests))
    by_key: dict[str, set] = {}
    for request, route in zip(requests, routes):
        by_key.setdefault(request["headers"]["authorization"], set()).add(route)
    assert all(len(members) == 1 for members in by_key.values()), by_key
    assert {m for members in by_key.values() for m in members} == {"a/m", "b/m"}   # both are used
    assert a.stats()["chat"] + b.stats()["chat"] == len(requests)


def test_a_split_by_header_is_sticky_across_a_restart(upstreams, gateways):
    a, b = upstreams(), upstreams()
    text = (f'provider a {{ url "{a.url}" }}\nprovider b {{ url "{b.url}" }}\n'
            'rule r { route split [30% a/m, 70% b/m] by header("x-user") }')
    users = [f"user-{i}" for i in range(30)]
    requests = [{"headers": {"x-user": u}} for u in users for _ in range(3)]
    first = asyncio.run(routes_of(gateways(text), requests))
    again = asyncio.run(routes_of(gateways(text), requests))   # another process, the same hash
    assert first == again
    per_user = {u: {r for q, r in zip(requests, first) if q["headers"]["x-user"] == u} for u in users}
    assert all(len(members) == 1 for members in per_user.values()), per_user
    assert {m for members in per_user.values() for m in members} == {"a/m", "b/m"}


def test_fastest_prefers_the_faster_upstream_after_warm_up(upstreams, gateways):
    slow, fast = upstreams("--latency", "1s"), upstreams()
    gw = gateways(f'provider slow {{ url "{slow.url}" }}\nprovider fast {{ url "{fast.url}" }}\n'
                  'rule r { route fastest [slow/m, fast/m] }')
    # Warm-up: each member is tried once its latency is unknown (unknown sorts first).
    warm = [gw.chat("m").headers["x-edgerules-route"] for _ in range(3)]
    assert set(warm) == {"slow/m", "fast/m"}
    assert slow.stats()["chat"] == 1
    after = [gw.chat("m").headers["x-edgerules-route"] for _ in range(20)]
    assert after == ["fast/m"] * 20
    assert slow.stats()["chat"] == 1
    latency = gw.admin_policy()["health"]
    assert latency["slow"]["latency_ms"]["m"] >= 1000 > latency["fast"]["latency_ms"]["m"]
