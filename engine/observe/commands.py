"""`edgerules usage` and `edgerules logs`: the request log read straight from its store."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from . import query
from .store import StoreError, describe, open_store, resolve_uri

FOLLOW_EVERY = 1.0   # seconds between two looks for new rows under --follow


def add_commands(sub) -> None:
    p = sub.add_parser("usage", help="requests, tokens and spend from the request log, grouped",
                       description="Usage and spend from the request log, read from its store.")
    _store_arguments(p)
    p.add_argument("--by", default="", metavar="G,G",
                   help=f"group by these, comma-separated: {', '.join(query.GROUPS)} (default: one total)")
    p.add_argument("--since", default="7d", help="an age (7d, 12h), epoch seconds or ISO 8601 (default 7d)")
    p.add_argument("--until", default=None, help="the end of the window (default now)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_usage)

    p = sub.add_parser("logs", help="the newest requests of the request log",
                       description="Requests from the request log, oldest of the page first.")
    _store_arguments(p)
    p.add_argument("--key", help="only this key's requests")
    p.add_argument("--model", help="only requests for this model (as the client asked; SERVER__TOOL for a tool call)")
    p.add_argument("--kind", help="only this kind of row: chat, embeddings or tool (MCP tool calls)")
    p.add_argument("--status", help="only this status, or a class such as 5xx")
    p.add_argument("--since", default=None, help="an age (1h), epoch seconds or ISO 8601")
    p.add_argument("--limit", type=int, default=20, help="rows to show (default 20)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new requests as they are logged")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(run=cmd_logs)


def _store_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="URI", help="the log store (default: $EDGERULES_LOG_STORE, else auto)")
    p.add_argument("--rules", metavar="PATH",
                   help="the policy path `auto` is beside (default: $EDGERULES_RULES, else rules/)")


def _uri(args) -> str:
    uri = args.store or os.environ.get("EDGERULES_LOG_STORE", "").strip() or "auto"
    return resolve_uri(uri, args.rules or os.environ.get("EDGERULES_RULES", "").strip() or "rules/")


async def _open(args):
    uri = _uri(args)
    if uri.lower() == "none":
        raise StoreError("the request log is off (log store none)")
    if uri.lower().startswith("sqlite://") and not Path(uri[len("sqlite://"):]).is_file():
        raise StoreError(f"no request log at {uri} (give --store, or --rules for the default beside the policy)")
    return await open_store(uri)


def cmd_usage(args) -> int:
    try:
        group_by = query.parse_group_by(args.by)
        start, end = query.window(args.since, args.until)
        rows = asyncio.run(_usage(args, group_by, start, end))
    except (query.QueryError, StoreError) as exc:
        print(f"edgerules usage: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = [*group_by, "requests", "errors", "cache_hits", "input_tokens", "output_tokens", "cost_usd",
               "p50_ms", "p95_ms"]
    _table(columns, rows)
    return 0


async def _usage(args, group_by, start, end):
    store = await _open(args)
    try:
        return await query.usage(store, group_by, start, end)
    finally:
        await store.close()


LOG_COLUMNS = ("time", "id", "kind", "key", "model", "route", "status", "error_code", "cache", "latency_ms",
               "input_tokens", "output_tokens", "cost_usd")


def cmd_logs(args) -> int:
    try:
        if args.status:
            query.status_clause(args.status)
        start = query.parse_when(args.since, time.time(), "since") if args.since else None
        return asyncio.run(_logs(args, start))
    except (query.QueryError, StoreError) as exc:
        print(f"edgerules logs: {exc}", file=sys.stderr)
        return 2


async def _logs(args, start) -> int:
    store = await _open(args)
    filters = {"key": args.key, "model": args.model, "kind": args.kind, "status": args.status, "start": start}
    try:
        rows = list(reversed(await query.requests(store, limit=args.limit, **filters)))
        _print_rows(args, rows, header=True)
        last = rows[-1]["seq"] if rows else 0
        while args.follow:
            await asyncio.sleep(FOLLOW_EVERY)
            rows = await query.requests(store, limit=query.MAX_LIMIT, after=last, **filters)
            _print_rows(args, rows, header=False)
            if rows:
                last = rows[-1]["seq"]
    finally:
        await store.close()
    return 0


def _print_rows(args, rows, header: bool) -> None:
    if args.json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return
    _table(LOG_COLUMNS, rows, header=header)


def _table(columns, rows, header: bool = True) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    if header:
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), flush=True)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    return str(value)
