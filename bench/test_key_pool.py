"""The cost of a key pool's pick per upstream call (engine/gateway/keypool.py), in process: a pool
of 4 keys without limits (a rotation), with a request and a token limit on every key picked by
most room (a window read per key, then one hit), and the same by round robin (one hit), on the
memory storage the gateway uses without --state redis. `spent` counts a JSON answer's tokens.

`python3 -m pytest bench/test_key_pool.py` prints the time of a round of CALLS picks; CI runs each
once with --benchmark-disable.
"""
from __future__ import annotations

import asyncio

import orjson
import pytest

from edgerules.gateway.keypool import KeyPool
from edgerules.lang.spec import PoolKey, ProviderSpec

CALLS = 200
ANSWER = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 30}})
HEADERS = {"authorization": "Bearer sk-bench-key-0"}


def _pool(limited: bool, pick: str) -> KeyPool:
    keys = tuple(PoolKey(f"k{i}", f"sk-bench-key-{i}", (10**9, 60.0) if limited else None,
                         (10**12, 60.0) if limited else None) for i in range(4))
    spec = ProviderSpec("bench", url="http://127.0.0.1:9/v1", api_key=keys[0].secret, key_pool=keys,
                        key_pick=pick)
    return KeyPool(spec, HEADERS)


async def _round(pool: KeyPool) -> None:
    for _ in range(CALLS):
        i = await pool.take(set())
        await pool.spent(i, {}, ANSWER)


@pytest.mark.parametrize("kind", ["no limits", "limits, most_room", "limits, round_robin"])
def test_key_pick(benchmark, kind):
    benchmark.group = f"key pool: {CALLS} picks of 4 keys"
    benchmark.extra_info["calls_per_round"] = CALLS
    pool = _pool(kind != "no limits", "round_robin" if "round_robin" in kind else "most_room")
    loop = asyncio.new_event_loop()
    try:
        benchmark(lambda: loop.run_until_complete(_round(pool)))
    finally:
        loop.close()
    assert sorted(pool.cool_until) == [0.0] * 4
