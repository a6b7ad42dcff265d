"""Questions asked of the request log, in SQL both stores speak: usage and spend grouped by what
the caller names, a page of requests, one request."""
from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from decimal import Decimal

from .store import COLUMNS, TABLE

GROUPS = {"key": "q.key", "model": "q.model", "provider": "q.provider", "route": "q.route",
          "status": "q.status", "tag": "t.tag", "path": "q.path", "cache": "q.cache", "kind": "q.kind"}
_AGE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|m|h|d|w)?\s*$")
_UNIT = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_STATUS = re.compile(r"^([1-5])xx$")
LIST_COLUMNS = tuple(c for c in COLUMNS if c not in ("request_body", "answer_body"))
MAX_LIMIT = 1000


class QueryError(ValueError):
    """A parameter the caller got wrong; the message names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def parse_age(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s`, `2w` as seconds (a bare number is seconds)."""
    match = _AGE.match(text or "")
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m)")
    return float(match.group(1)) * _UNIT[match.group(2)]


def parse_when(text: str, now: float, param: str) -> float:
    """A point in time: an age back from now (`7d`), seconds since the epoch, or ISO 8601."""
    text = text.strip()
    try:
        if not text.replace(".", "", 1).isdigit():   # a bare number is a time, not an age
            return now - parse_age(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(param, f"'{param}' takes an age (7d, 12h), epoch seconds or an ISO 8601 time, "
                                f"not {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def window(since: str | None, until: str | None, now: float | None = None,
           default_since: str = "7d") -> tuple[float, float]:
    now = time.time() if now is None else now
    start = parse_when(since or default_since, now, "since")
    end = parse_when(until, now, "until") if until else now + 1.0
    return start, end


def parse_group_by(text: str | None) -> list[str]:
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    for name in names:
        if name not in GROUPS:
            raise QueryError("group_by", f"cannot group by {name!r} (use {', '.join(GROUPS)})")
    return list(dict.fromkeys(names))


async def usage(store, group_by: list[str], start: float, end: float) -> list[dict]:
    """Requests, errors, cache hits, tokens, cost and p50/p95 latency for each group."""
    params: list = []
    head, join = "", ""
    if "tag" in group_by:
        tags = await _tags_between(store, start, end)
        if tags:
            head = "WITH t(tag, pattern) AS (VALUES " + ", ".join("(?, ?)" for _ in tags) + ") "
            for tag in tags:
                params += [tag, "%," + re.sub(r"([\\%_])", r"\\\1", tag) + ",%"]
            join = " LEFT JOIN t ON q.tags LIKE t.pattern ESCAPE '\\'"
    names = [f"g{i}" for i in range(len(group_by))]
    picks = [(GROUPS[g] if g != "tag" or join else "CAST(NULL AS TEXT)") + f" AS {n}"
             for g, n in zip(group_by, names)]
    over = f"PARTITION BY {', '.join(names)} " if names else ""
    inner = (f"SELECT {''.join(p + ', ' for p in picks)}q.status, q.cache, q.input_tokens, q.output_tokens, "
             f"q.cached_tokens, q.cost_usd, q.latency_ms FROM {TABLE} q{join} WHERE q.ts >= ? AND q.ts < ?")
    params += [start, end]
    ranked = (f"SELECT r0.*, ROW_NUMBER() OVER ({over}ORDER BY latency_ms) AS rn, "
              f"COUNT(*) OVER ({over.strip()}) AS n FROM ({inner}) r0")
    sql = (head + f"SELECT {''.join(n + ', ' for n in names)}COUNT(*) AS requests, "
           "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors, "
           "SUM(CASE WHEN cache IN ('HIT', 'HIT-SEMANTIC') THEN 1 ELSE 0 END) AS cache_hits, "
           "COALESCE(SUM(input_tokens), 0) AS input_tokens, COALESCE(SUM(output_tokens), 0) AS output_tokens, "
           "COALESCE(SUM(cached_tokens), 0) AS cached_tokens, COALESCE(SUM(cost_usd), 0) AS cost_usd, "
           "MIN(CASE WHEN rn >= 0.5 * n THEN latency_ms END) AS p50_ms, "
           "MIN(CASE WHEN rn >= 0.95 * n THEN latency_ms END) AS p95_ms "
           f"FROM ({ranked}) r1" + (f" GROUP BY {', '.join(names)}" if names else "")
           + " ORDER BY cost_usd DESC, requests DESC")
    out = []
    for row in await store.fetch(sql, params):
        if not row["requests"]:
            continue   # no group at all: an aggregate over nothing
        item = {g: row[n] for g, n in zip(group_by, names)}
        for name in ("requests", "errors", "cache_hits", "input_tokens", "output_tokens", "cached_tokens"):
            item[name] = int(row[name] or 0)
        item["cost_usd"] = round(float(row["cost_usd"] or 0), 10)
        item["p50_ms"] = _number(row["p50_ms"])
        item["p95_ms"] = _number(row["p95_ms"])
        out.append(item)
    return out


async def _tags_between(store, start: float, end: float) -> list[str]:
    rows = await store.fetch(f"SELECT DISTINCT tags FROM {TABLE} WHERE ts >= ? AND ts < ? AND tags <> ''",
                             (start, end))
    return sorted({tag for row in rows for tag in row["tags"].split(",") if tag})


def _number(value):
    if value is None:
        return None
    return float(value) if isinstance(value, Decimal) else value


async def requests(store, *, key: str | None = None, model: str | None = None, status: str | None = None,
                   kind: str | None = None,
                   start: float | None = None, end: float | None = None, limit: int = 50,
                   cursor: int | None = None, after: int | None = None) -> list[dict]:
    """Newest first (oldest first with `after`, as `logs --follow` reads); bodies left out."""
    where, params = [], []
    for column, value in (("key", key), ("model", model), ("kind", kind)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if status:
        where.append(status_clause(status))
    if start is not None:
        where.append("ts >= ?")
        params.append(start)
    if end is not None:
        where.append("ts < ?")
        params.append(end)
    if cursor is not None:
        where.append("seq < ?")
        params.append(cursor)
    if after is not None:
        where.append("seq > ?")
        params.append(after)
    sql = (f"SELECT seq, {', '.join(LIST_COLUMNS)} FROM {TABLE}" + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY seq {'ASC' if after is not None else 'DESC'} LIMIT ?")
    params.append(max(1, min(limit, MAX_LIMIT)))
    return [present(row) for row in await store.fetch(sql, params)]


def status_clause(status: str) -> str:
    """`5xx`, `4xx`... or one status; the value is checked, so it is safe to splice."""
    status = status.strip().lower()
    match = _STATUS.match(status)
    if match:
        low = int(match.group(1)) * 100
        return f"status >= {low} AND status < {low + 100}"
    if status.isdigit() and 100 <= int(status) <= 599:
        return f"status = {int(status)}"
    raise QueryError("status", f"'status' takes a status such as 429 or a class such as 5xx, not {status!r}")


async def request(store, rid: str) -> dict | None:
    """The newest row with this id, bodies included."""
    rows = await store.fetch(f"SELECT seq, {', '.join(COLUMNS)} FROM {TABLE} WHERE id = ? ORDER BY seq DESC "
                             "LIMIT 1", (rid,))
    return present(rows[0]) if rows else None


def present(row: dict) -> dict:
    """A stored row as the API and the CLI show it: lists for rules and tags, an ISO time."""
    out = {k: _number(v) for k, v in row.items()}
    out["time"] = datetime.fromtimestamp(out["ts"], timezone.utc).isoformat(timespec="milliseconds")
    out["rules"] = [r for r in (row.get("rules") or "").split(",") if r]
    out["tags"] = [t for t in (row.get("tags") or "").split(",") if t]
    return out
