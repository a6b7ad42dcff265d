"""The drills that two gateways sharing one Redis must pass, whatever the topology (a plain server in
test_multi_instance.py; Sentinel and Cluster in test_redis_topologies.py). Each policy has rules
keyed by the x-test header: `exact` (a request limit), `cache`, `breaker` (fallback [flaky/m, up/m])."""
from __future__ import annotations

import asyncio
import uuid

import httpx

from procs import wait_until


def chat(gw, test: str, content: str = "hello", **fields) -> httpx.Response:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **fields}
    return gw.post("/v1/chat/completions", json=body, headers={"x-test": test})


def fresh() -> str:
    return f"question {uuid.uuid4().hex[:8]}"


async def crowd(gateways, test: str, n: int, content: str = "hello") -> list[httpx.Response]:
    """n requests at once, spread over the gateways in turn."""
    limits = httpx.Limits(max_connections=n + 10)
    clients = [httpx.AsyncClient(base_url=g.url, limits=limits, timeout=60, trust_env=False) for g in gateways]
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    try:
        return await asyncio.gather(*(clients[i % len(clients)].post(
            "/v1/chat/completions", json=body, headers={"x-test": test}) for i in range(n)))
    finally:
        for client in clients:
            await client.aclose()


def limit_is_exact_across(pair, allowed: int, note=lambda: "") -> None:
    """Three times the limit sent at once over both: exactly `allowed` admitted, then both refuse."""
    statuses = [r.status_code for r in asyncio.run(crowd(pair, "exact", 3 * allowed))]
    assert statuses.count(200) == allowed and statuses.count(429) == 2 * allowed, (statuses, note())
    for gw in pair:
        assert chat(gw, "exact").status_code == 429


def cache_is_shared(pair, upstream) -> None:
    """An answer stored by one is a HIT on the other, streamed too, and the upstream saw one call."""
    first, second = pair
    content = fresh()
    before = upstream.stats()["chat"]
    miss = chat(first, "cache", content)
    assert miss.status_code == 200 and miss.headers["x-edgerules-cache"] == "MISS", miss.text
    hit = chat(second, "cache", content)
    assert hit.status_code == 200 and hit.headers["x-edgerules-cache"] == "HIT"
    assert hit.json() == miss.json()
    streamed = chat(second, "cache", content, stream=True)   # replayed from the stored answer
    assert streamed.headers["x-edgerules-cache"] == "HIT" and streamed.text.endswith("data: [DONE]\n\n")
    assert upstream.stats()["chat"] == before + 1


def breaker_is_shared(pair, bad) -> None:
    """A circuit opened by the first is open on the second, which then skips flaky without a call."""
    first, second = pair
    for _ in range(2):   # two failures open flaky's circuit; the fallback answers meanwhile
        resp = chat(first, "breaker")
        assert resp.status_code == 200 and resp.headers["x-edgerules-route"] == "up/m"
    wait_until(lambda: 'edgerules_provider_open{provider="flaky"} 1' in second.http.get("/metrics").text, 30,
               what="the second gateway to see flaky's circuit open")
    before = bad.stats()["chat"]
    resp = chat(second, "breaker")
    assert resp.status_code == 200 and resp.headers["x-edgerules-route"] == "up/m"
    assert resp.headers["x-edgerules-attempts"] == "1"
    assert bad.stats()["chat"] == before   # the open circuit skipped flaky without calling it


def redis_gone(gw, limited: str) -> None:
    """With Redis unreachable: limits fail closed (503), the cache is skipped (BYPASS, never an error),
    breakers keep their local state (flaky's circuit is open), and the rest is served."""
    refused = chat(gw, limited)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "limits_unavailable"
    served = chat(gw, "cache", fresh())
    assert served.status_code == 200 and served.headers["x-edgerules-cache"] == "BYPASS", served.text
    routed = chat(gw, "breaker")
    assert routed.status_code == 200 and routed.headers["x-edgerules-route"] == "up/m"
    assert chat(gw, "plain").status_code == 200
