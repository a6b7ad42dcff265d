"""MCP tool calls in the stored request log: a real `edgerules serve` with the built-in demo tool
server and a log store (an SQLite file, and a real PostgreSQL), called with the official mcp client; the rows read back through
GET /admin/requests, /admin/usage and `edgerules logs` / `edgerules usage` (the console script)."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess

import psycopg
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from procs import EDGERULES, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client` instead:DeprecationWarning")

ALICE = "sk-alice-toollog-canary-0001"

POLICY = f"""
key alice {{ secret "{ALICE}" }}
provider echo {{ format echo }}
rule models {{ route echo }}

mcp demo {{
    builtin echo
}}

rule echo_in_full for tools {{
    when tool == "echo"
    log full
}}
rule no_passwords for tools {{
    when arg("text") contains "password"
    deny "do not send passwords through tools"
}}
rule pace_sums for tools {{
    when tool == "add"
    limit calls 1 per 1m by key
    tag "sums"
}}
rule stats_unlogged for tools {{
    when tool == "admin_stats"
    log none
}}
"""


def stored_rows(store: str) -> str:
    """Every stored byte of the log table, as one string."""
    if store.startswith("sqlite://"):
        with sqlite3.connect(store[len("sqlite://"):]) as db:
            return json.dumps(db.execute("SELECT * FROM edgerules_requests").fetchall())
    with psycopg.connect(store) as conn:
        return json.dumps(conn.execute("SELECT * FROM edgerules_requests").fetchall(), default=str)


async def _calls(url: str, calls: list[tuple[str, dict]]) -> list:
    headers = {"authorization": f"Bearer {ALICE}", "x-canary": ALICE}
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return [await session.call_tool(name, args) for name, args in calls]


def text_of(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def test_tool_calls_are_rows_of_the_request_log(gateways, store):
    gw = gateways(POLICY, "--log-store", store)
    wait_until(lambda: gw.admin_policy()["tool_servers"]["demo"]["connected"], 30, what="the demo server")
    ok, denied, first_sum, limited, stats = asyncio.run(_calls(gw.url + "/mcp", [
        ("demo__echo", {"text": f"hello {ALICE}"}),          # allowed, `log full`, a secret in the args
        ("demo__echo", {"text": "my password is hunter2"}),    # denied by a rule
        ("demo__add", {"a": 1, "b": 2}),
        ("demo__add", {"a": 3, "b": 4}),                       # over `limit calls 1 per 1m`
        ("demo__admin_stats", {}),                             # `log none`: no row
    ]))
    assert not ok.isError and "hello" in text_of(ok) and ALICE not in text_of(ok)
    assert denied.isError and "passwords" in text_of(denied)
    assert not first_sum.isError and limited.isError
    assert not stats.isError

    def rows():
        data = gw.http.get("/admin/requests", params={"kind": "tool", "limit": 100}).raise_for_status().json()["data"]
        return data if len(data) >= 4 else None
    by_time = list(reversed(wait_until(rows, 30, what="4 tool rows in the request log")))
    assert [r["model"] for r in by_time] == ["demo__echo", "demo__echo", "demo__add", "demo__add"]
    assert [(r["status"], r["error_code"]) for r in by_time] == [
        (200, None), (403, "denied_by_policy"), (200, None), (429, "rate_limit_exceeded")]
    for row in by_time:
        assert row["kind"] == "tool" and row["path"] == "/mcp" and row["key"] == "alice"
        assert row["route"] == "demo" and row["cache"] is None and row["cost_usd"] is None
        assert row["policy"] == gw.admin_policy()["version"] and row["latency_ms"] >= 0
        assert row["id"] and row["time"]
    echo_ok, echo_denied, sum_ok, sum_limited = by_time
    assert echo_denied["error"] == "do not send passwords through tools" and echo_ok["error"] is None
    assert sum_limited["error"]   # the limit's refusal, as the agent was told
    assert echo_ok["attempts"] == 1 and sum_ok["attempts"] == 1 and sum_limited["attempts"] == 0
    assert "echo_in_full" in echo_ok["rules"] and "no_passwords" in echo_denied["rules"]
    assert sum_ok["tags"] == ["sums"] and sum_limited["rules"] == ["pace_sums"]

    # Arguments only under `log full`, redacted; the bodies are on the one-row answer.
    full = gw.http.get(f"/admin/requests/{echo_ok['id']}").json()
    assert json.loads(full["request_body"]) == {"text": "hello [redacted]"}
    assert json.loads(gw.http.get(f"/admin/requests/{echo_denied['id']}").json()["request_body"]) == \
        {"text": "my password is hunter2"}
    assert gw.http.get(f"/admin/requests/{sum_ok['id']}").json()["request_body"] is None

    # The kind filter keeps model rows apart; usage groups tool calls by kind and by tool.
    assert gw.http.get("/admin/requests", params={"kind": "chat"}).json()["data"] == []
    usage = gw.http.get("/admin/usage", params={"group_by": "kind,model"}).raise_for_status().json()["data"]
    counts = {(u["kind"], u["model"]): (u["requests"], u["errors"]) for u in usage}
    assert counts == {("tool", "demo__echo"): (2, 1), ("tool", "demo__add"): (2, 1)}

    gw.stop()   # flushes the queue; then the store is read by the console script
    out = subprocess.run([EDGERULES, "logs", "--store", store, "--json", "--kind", "tool"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cli = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["model"], r["status"]) for r in cli] == [(r["model"], r["status"]) for r in by_time]
    table = subprocess.run([EDGERULES, "logs", "--store", store, "--status", "4xx"], capture_output=True,
                           text=True, timeout=60)
    assert table.returncode == 0 and "demo__add" in table.stdout and "tool" in table.stdout
    out = subprocess.run([EDGERULES, "usage", "--store", store, "--by", "model", "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert {u["model"]: u["requests"] for u in json.loads(out.stdout)} == {"demo__echo": 2, "demo__add": 2}

    # The canary (the key's secret, sent as a header and as an argument) is in no stored byte.
    stored = stored_rows(store)
    assert ALICE not in stored and "[redacted]" in stored
    assert ALICE not in out.stdout + table.stdout
