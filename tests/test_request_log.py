"""The stored request log through a real gateway, on an SQLite file and on a real PostgreSQL: a row
for every outcome, request ids, redaction under `log full`, `log none`, retention, the full queue,
the flush at shutdown, and `edgerules logs` through the console script."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import psycopg
import pytest

from gw import start_gateway
from procs import EDGERULES, Process, free_port, wait_until

ALICE, BOB = "sk-alice-requestlog-0001", "sk-bob-requestlog-00002"
PROVIDER_KEY = "sk-provider-canary-777777"
PRICE_IN, PRICE_OUT = 100.0, 200.0

POLICY = """
provider up {
    url "{url}"
    api_key "{provider_key}"
    price m input 100 output 200
}
provider down { url "http://127.0.0.1:{dead}/v1" }

key alice { secret "{alice}" }
key bob   { secret "{bob}" }

rule tagged   { when header("x-team") == "red" tag "red" }
rule denied   { when header("x-test") == "deny"    deny 403 "not today" }
rule limited  { when header("x-test") == "limited" limit requests 1 per 1m by key }
rule broken   { when header("x-test") == "broken"  route down/m }
rule cached   { when header("x-test") == "cached"  cache ttl 1h }
rule quiet    { when header("x-test") == "quiet"   log none }
rule verbose  { when header("x-test") == "full"    log full }
rule everything { route up/m }
"""


def policy(upstream) -> str:
    return (POLICY.replace("{url}", upstream.url).replace("{provider_key}", PROVIDER_KEY)
            .replace("{dead}", str(free_port())).replace("{alice}", ALICE).replace("{bob}", BOB))


def chat(gw, key=ALICE, content="hello", test=None, **fields) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **fields.pop("headers", {})}
    if test:
        headers["x-test"] = test
    return gw.chat("up/m", content, headers=headers, **fields)


def logged(gw, count: int, **params) -> list[dict]:
    """Wait until the log holds `count` rows (matching params); newest first."""
    def look():
        rows = gw.http.get("/admin/requests", params={"limit": 1000, **params}).raise_for_status().json()["data"]
        return rows if len(rows) >= count else None
    return wait_until(look, 30, what=f"{count} rows in the request log")


def test_a_row_for_every_outcome(upstream, store, tmp_path):
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store)
    try:
        ok = chat(gw, headers={"x-request-id": "client-id-42", "x-team": "red"})
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "client-id-42"
        usage = ok.json()["usage"]
        cost = (usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT) / 1e6
        assert float(ok.headers["x-edgerules-cost"]) == pytest.approx(cost)
        denied = chat(gw, test="deny")
        assert denied.status_code == 403
        assert chat(gw, key=BOB, test="limited").status_code == 200
        limited = chat(gw, key=BOB, test="limited")
        assert limited.status_code == 429
        broken = chat(gw, test="broken")
        assert broken.status_code == 502
        miss, hit = chat(gw, test="cached"), chat(gw, test="cached")
        assert (miss.headers["x-edgerules-cache"], hit.headers["x-edgerules-cache"]) == ("MISS", "HIT")
        assert hit.headers["x-edgerules-cost"] == "0"
        with gw.http.stream("POST", "/v1/chat/completions", headers={"authorization": f"Bearer {ALICE}"},
                            json={"model": "up/m", "stream": True,
                                  "messages": [{"role": "user", "content": "a stream"}]}) as streamed:
            assert streamed.status_code == 200
            stream_id = streamed.headers["x-request-id"]
            streamed.read()
        unauthorised = chat(gw, key="sk-nobody-at-all-000", headers={"x-request-id": "bad id\twith tab"})
        assert unauthorised.status_code == 401
        made_up = unauthorised.headers["x-request-id"]
        assert made_up != "bad id\twith tab" and len(made_up) == 24
        assert chat(gw, test="quiet").status_code == 200   # `log none`: no row

        rows = {r["id"]: r for r in logged(gw, 9)}
        assert len(rows) == 9
        version = gw.admin_policy()["version"]
        row = rows["client-id-42"]
        assert (row["status"], row["key"], row["model"], row["route"], row["provider"], row["cache"]) == \
            (200, "alice", "up/m", "up/m", "up", "BYPASS")
        assert (row["input_tokens"], row["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert row["cost_usd"] == pytest.approx(cost) and row["tags"] == ["red"]
        assert row["rules"] == ["tagged", "everything"] and row["policy"] == version
        assert row["path"] == "/v1/chat/completions" and row["attempts"] == 1 and row["kind"] == "chat"
        assert row["latency_ms"] > 0 and row["ttft_ms"] is not None
        assert "request_body" not in row   # a page of requests leaves bodies out
        by_status = {}
        for r in rows.values():
            by_status.setdefault(r["status"], []).append(r)
        assert by_status[403][0]["error_code"] == "denied_by_policy"
        assert by_status[429][0]["error_code"] == "rate_limit_exceeded" and by_status[429][0]["key"] == "bob"
        assert by_status[502][0]["error_code"] == "upstream_error" and by_status[502][0]["route"] == "down/m"
        assert by_status[401][0]["error_code"] == "invalid_api_key" and by_status[401][0]["id"] == made_up
        assert sorted(r["cache"] for r in rows.values() if "cached" in r["rules"]) == ["HIT", "MISS"]
        assert [r["cost_usd"] for r in rows.values() if r["cache"] == "HIT"] == [0.0]
        stream = rows[stream_id]
        assert stream["status"] == 200 and stream["ttft_ms"] <= stream["latency_ms"]
        assert stream["input_tokens"] > 0 and stream["output_tokens"] > 0 and stream["cost_usd"] > 0

        one = gw.http.get("/admin/requests/client-id-42").json()
        assert one["id"] == "client-id-42" and one["request_body"] is None and one["answer_body"] is None
        missing = gw.http.get("/admin/requests/no-such-id")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        errors = gw.http.get("/admin/requests", params={"status": "5xx"}).json()["data"]
        assert [r["status"] for r in errors] == [502]
        page = gw.http.get("/admin/requests", params={"limit": 4}).json()
        rest = gw.http.get("/admin/requests", params={"limit": 100, "cursor": page["next_cursor"]}).json()
        assert len(page["data"]) == 4 and len(rest["data"]) == 5 and rest["next_cursor"] is None
        assert {r["id"] for r in page["data"]} | {r["id"] for r in rest["data"]} == set(rows)
        bob = gw.http.get("/admin/requests", params={"key": "bob"}).json()["data"]
        assert len(bob) == 2
        bad = gw.http.get("/admin/requests", params={"status": "6xx"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
    finally:
        gw.stop()


def test_log_full_keeps_bodies_with_secrets_redacted(upstream, store, tmp_path):
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store)
    try:
        canary = f"my keys are {PROVIDER_KEY} and {BOB}"
        answer = chat(gw, test="full", content=canary)
        assert answer.status_code == 200
        with gw.http.stream("POST", "/v1/chat/completions",
                            headers={"authorization": f"Bearer {ALICE}", "x-test": "full"},
                            json={"model": "up/m", "stream": True,
                                  "messages": [{"role": "user", "content": canary}]}) as streamed:
            stream_id = streamed.headers["x-request-id"]
            streamed.read()
        logged(gw, 2)
        for rid in (answer.headers["x-request-id"], stream_id):
            row = gw.http.get(f"/admin/requests/{rid}").json()
            text = orjson.dumps(row).decode()
            assert PROVIDER_KEY not in text and BOB not in text and ALICE not in text
            request_body = orjson.loads(row["request_body"])
            assert request_body["messages"][0]["content"] == "my keys are [redacted] and [redacted]"
            answer_body = orjson.loads(row["answer_body"])
            assert answer_body["choices"][0]["message"]["content"]   # assembled, for the stream too
    finally:
        gw.stop()


def test_log_store_none_keeps_nothing_and_says_so(upstream, tmp_path):
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", "none")
    try:
        assert chat(gw).status_code == 200
        off = gw.http.get("/admin/usage")
        assert off.status_code == 404 and off.json()["error"]["code"] == "request_log_off"
        assert gw.admin_policy()["request_log"] is None
    finally:
        gw.stop()
    assert not (tmp_path / "gw" / "edgerules-requests.db").exists()


def test_the_default_store_is_a_file_beside_the_policy(upstream, tmp_path):
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch")
    try:
        rid = chat(gw).headers["x-request-id"]
        logged(gw, 1)
        assert gw.admin_policy()["request_log"]["store"] == f"sqlite://{tmp_path / 'gw' / 'edgerules-requests.db'}"
    finally:
        gw.stop()
    out = subprocess.run([EDGERULES, "logs", "--json", "--rules", str(tmp_path / "gw")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [orjson.loads(line)["id"] for line in out.stdout.splitlines()] == [rid]


def _insert_old_rows(store: str, count: int, age: float) -> None:
    """Rows written long ago, straight into the store (the gateway creates the table first)."""
    from edgerules.observe.store import COLUMNS, TABLE
    row = {c: None for c in COLUMNS} | {"id": "old", "ts": time.time() - age, "status": 200, "kind": "chat",
                                         "key": "alice", "model": "up/m", "latency_ms": 1.0, "cache": "MISS"}
    sql = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    values = [tuple(row[c] for c in COLUMNS)] * count
    if store.startswith("sqlite://"):
        with sqlite3.connect(store[len("sqlite://"):]) as db:
            db.executemany(sql, values)
    else:
        with psycopg.connect(store, autocommit=True) as conn:
            conn.cursor().executemany(sql.replace("?", "%s"), values)


def test_retention_deletes_old_rows_and_keeps_at_most_max_rows(upstream, store, tmp_path):
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store)
    gw.stop()   # it made the table
    _insert_old_rows(store, 5, age=3 * 86400)    # older than 2d: deleted
    _insert_old_rows(store, 4, age=3600)         # younger: kept
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store,
                       "--log-retention", "2d")
    try:
        wait_until(lambda: len(gw.http.get("/admin/requests", params={"limit": 100}).json()["data"]) == 4,
                   30, what="the rows past the retention deleted")
    finally:
        gw.stop()
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store,
                       "--log-max-rows", "3")
    try:
        wait_until(lambda: len(gw.http.get("/admin/requests", params={"limit": 100}).json()["data"]) == 3,
                   30, what="the oldest rows past --log-max-rows deleted")
        for _ in range(2):
            assert chat(gw).status_code == 200
        logged(gw, 5)   # new rows are written; the next pass trims again
    finally:
        gw.stop()


class StoreLock:
    """Holds the store's table locked from outside, so the gateway's writer waits."""

    def __init__(self, store: str):
        if store.startswith("sqlite://"):
            self.conn = sqlite3.connect(store[len("sqlite://"):], isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")
        else:
            self.conn = psycopg.connect(store)
            self.conn.execute("LOCK TABLE edgerules_requests IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        if isinstance(self.conn, sqlite3.Connection):
            self.conn.execute("COMMIT")
        else:
            self.conn.commit()
        self.conn.close()


def test_a_full_queue_drops_rows_and_counts_them_while_requests_are_answered(upstream, store, tmp_path):
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store, "--log-queue", "5")
    try:
        lock = StoreLock(store)
        try:
            statuses = [chat(gw, content=f"n{i}").status_code for i in range(30)]
            assert statuses == [200] * 30
            state = gw.admin_policy()["request_log"]
            assert state["dropped"] >= 30 - 5 - 5 and state["queued"] <= 5
            metrics = gw.http.get("/metrics").text
            assert f"edgerules_request_log_dropped_total {state['dropped']}" in metrics
        finally:
            lock.release()
        state = wait_until(lambda: (s := gw.admin_policy()["request_log"])["queued"] == 0 and s["written"] + s[
            "dropped"] == 30 and s, 60, what="the queue drained")
        rows = logged(gw, state["written"])
        assert len(rows) == state["written"]
    finally:
        gw.stop()


def test_shutdown_writes_every_queued_row(upstream, store, tmp_path):
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store)
    ids = [chat(gw, content=f"n{i}").headers["x-request-id"] for i in range(40)]
    gw.stop()   # SIGTERM: uvicorn shuts down, the lifespan flushes the queue
    out = subprocess.run([EDGERULES, "logs", "--json", "--limit", "100", "--store", store],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(orjson.loads(line)["id"] for line in out.stdout.splitlines()) == sorted(ids)


def burst(gw, count: int, start: int = 0) -> dict[str, str]:
    """`count` requests over 8 connections, alternating keys: {request id: key name}."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: chat(gw, key=(ALICE, BOB)[i % 2], content=f"n{i}"),
                                range(start, start + count)))
    assert [a.status_code for a in answers] == [200] * count
    return {a.headers["x-request-id"]: ("alice", "bob")[(start + i) % 2] for i, a in enumerate(answers)}


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_burst_larger_than_one_insert_is_stored_row_for_row(upstream, tmp_path, writer):
    """Rows are written many to an INSERT (ROWS_PER_INSERT, 100), in the log's thread or in the
    writer process: a burst of 230 concurrent requests spans full and partial statements; every
    row lands whole, its columns in place."""
    store = f"sqlite://{tmp_path}/requests.db"
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store, "--log-writer", writer)
    try:
        keys = burst(gw, 230)
        rows = logged(gw, 230)
        assert {r["id"]: r["key"] for r in rows} == keys
        assert {(r["model"], r["route"], r["provider"], r["status"], r["cache"]) for r in rows} == {
            ("up/m", "up/m", "up", 200, "BYPASS")}
        pid = gw.admin_policy()["request_log"]["writer_pid"]
        assert (pid is None) == (writer == "thread")
    finally:
        gw.stop()


def test_the_writer_process_starts_under_load_and_a_dead_one_loses_no_row(upstream, tmp_path):
    """--log-writer auto: quiet traffic is written in the thread; a batch of 64 rows or more starts
    the writer process. Killed, it is replaced by the thread without losing a row, and stopping the
    gateway writes what is queued."""
    store = f"sqlite://{tmp_path}/requests.db"
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store)
    try:
        keys = {chat(gw, content="quiet").headers["x-request-id"]: "alice"}
        logged(gw, 1)
        assert gw.admin_policy()["request_log"]["writer_pid"] is None
        pid = None
        for round_ in range(20):   # bursts until one gather holds 64 rows (bounded)
            keys |= burst(gw, 150, start=1000 * (round_ + 1))
            pid = wait_until(lambda: (s := gw.admin_policy()["request_log"])["queued"] == 0 and [s["writer_pid"]],
                             30, what="the queue drained")[0]
            if pid is not None:
                break
        assert pid is not None, "no batch of 64 rows started the writer process"
        os.kill(pid, signal.SIGKILL)   # the writer process this test's gateway started
        keys |= burst(gw, 120, start=99_000)
        state = wait_until(lambda: (s := gw.admin_policy()["request_log"])["queued"] == 0 and s, 30,
                           what="the queue drained after the kill")
        assert state["writer_pid"] is None and state["dropped"] == 0 and state["failed_writes"] == 0
        assert "the writer process of" in gw.output()
        keys |= burst(gw, 40, start=200_000)
    finally:
        gw.stop()
    out = subprocess.run([EDGERULES, "logs", "--json", "--limit", "10000", "--store", store],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(keys)   # each row once: the kill came between two batches
    assert {(row := orjson.loads(line))["id"]: row["key"] for line in lines} == keys


def test_logs_follow_prints_new_requests(upstream, tmp_path):
    store = f"sqlite://{tmp_path}/requests.db"   # reading PostgreSQL is the shutdown test's
    gw = start_gateway(policy(upstream), tmp_path / "gw", "--no-watch", "--log-store", store)
    follower = None
    try:
        first = chat(gw, key=BOB).headers["x-request-id"]
        logged(gw, 1)
        out = tempfile.TemporaryFile()
        follower = Process(subprocess.Popen([EDGERULES, "logs", "--follow", "--key", "bob", "--status", "2xx",
                                             "--store", store], stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL), out)
        wait_until(lambda: first in follower.output(), 30, what="the first row printed")
        assert "time" in follower.output().splitlines()[0]   # a table with its header
        chat(gw, key=ALICE)                                     # filtered out
        second = chat(gw, key=BOB).headers["x-request-id"]
        wait_until(lambda: second in follower.output(), 30, what="the new row printed under --follow")
        assert follower.output().count("alice") == 0
    finally:
        if follower is not None:
            follower.stop()
        gw.stop()


def test_cli_errors_are_clear(tmp_path):
    out = subprocess.run([EDGERULES, "logs", "--store", f"sqlite://{tmp_path}/nothing.db"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "no request log at" in out.stderr
    out = subprocess.run([EDGERULES, "usage", "--by", "colour", "--store", f"sqlite://{tmp_path}/x.db"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot group by 'colour'" in out.stderr


def test_serve_refuses_a_log_store_it_cannot_open_without_showing_its_password(tmp_path):
    (tmp_path / "p.rules").write_text("provider demo { format echo }\nrule r { route demo/echo }\n")
    for store, said in ((f"sqlite://{tmp_path}/p.rules/x.db", "cannot open the log store"),
                        (f"postgresql://user:hunter2secret@127.0.0.1:{free_port()}/db", "cannot connect to the log store")):
        out = subprocess.run([EDGERULES, "serve", "--rules", str(tmp_path), "--port", str(free_port()),
                              "--log-store", store], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and said in out.stderr, out.stderr
        assert "hunter2secret" not in out.stderr
