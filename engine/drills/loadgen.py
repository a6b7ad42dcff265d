"""A bounded aiohttp load generator, for machines without wrk: N connections for D seconds.

`python -m edgerules.drills.loadgen URL --body FILE --connections N --seconds D` prints JSON:
{"requests", "errors", "rps", "p50_ms", "p99_ms"}. It stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def run(url: str, body: bytes, connections: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
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
    latencies.sort()
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000) if latencies else (lambda q: 0.0)
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
            "p50_ms": pick(0.50), "p99_ms": pick(0.99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgerules.drills.loadgen")
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="file with the JSON body to POST")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    with open(args.body, "rb") as f:
        body = f.read()
    import uvloop
    result = uvloop.run(run(args.url, body, args.connections, min(args.seconds, 60.0)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
