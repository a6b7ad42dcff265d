"""A bounded aiohttp load generator, for machines without wrk: N connections for D seconds.

`python -m edgerules.drills.loadgen URL --body FILE --connections N --seconds D [--stream]` prints
JSON: {"requests", "errors", "rps", "p50_ms", "p99_ms"}; with --stream also the time to the first
SSE event ("ttft_p50_ms", "ttft_p99_ms") and "events_per_s" (all `data:` events received over the
run). It stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def run(url: str, body: bytes, connections: int, seconds: float, stream: bool = False) -> dict:
    latencies: list[float] = []
    firsts: list[float] = []
    events = 0
    errors = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            nonlocal errors, events
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        if stream and resp.status == 200:
                            first, tail = None, b""
                            async for chunk in resp.content.iter_any():
                                if first is None:
                                    first = time.perf_counter() - t0
                                tail += chunk
                                events += tail.count(b"data:")
                                tail = tail[-4:]   # a "data:" cut by a read is counted once
                            if first is not None:
                                firsts.append(first)
                        else:
                            await resp.read()
                        if resp.status != 200:
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    out = {"requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
           "p50_ms": _pick(latencies, 0.50), "p99_ms": _pick(latencies, 0.99)}
    if stream:
        out.update(ttft_p50_ms=_pick(firsts, 0.50), ttft_p99_ms=_pick(firsts, 0.99), events_per_s=events / elapsed)
    return out


def _pick(values: list[float], q: float) -> float:
    """The q quantile of seconds, in ms (0.0 for no values)."""
    if not values:
        return 0.0
    values.sort()
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgerules.drills.loadgen")
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="file with the JSON body to POST")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--stream", action="store_true", help="read SSE: time to first event, events/s")
    args = parser.parse_args(argv)
    with open(args.body, "rb") as f:
        body = f.read()
    import uvloop
    result = uvloop.run(run(args.url, body, args.connections, min(args.seconds, 60.0), args.stream))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
