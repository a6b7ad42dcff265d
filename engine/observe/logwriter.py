"""The request log's SQLite writer process.

Under load the serving process hands each batch of rows, pickled, to this process over a pipe
and waits for its answer in the store's thread; the rows are inserted here, in one transaction a
batch. SQLite's own work (binding every value, the table and index B-trees, the WAL) then takes
neither the serving process's CPU nor its GIL: in process it cost about 14 µs a request, most of
it in GIL hand-offs between the store's thread and the event loop.

Protocol, one message each way per batch: the parent sends pickle.dumps(rows), the child answers
b"" when the batch is committed or the error's text when it is not (the batch is then rolled
back). An empty message from the parent ends the child; so does the parent's end of the pipe
closing (the serving process ended, however it ended).
"""
from __future__ import annotations

import itertools
import pickle
import signal
import sqlite3


def main(path: str, conn, head: str, row: str, per: int) -> None:
    # A Ctrl-C or a SIGTERM to the whole process group must not end this process before the
    # serving process has sent its last rows: it ends when told, or when the pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    statements: dict[int, str] = {}
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return
            if not data:
                return
            try:
                _insert(db, pickle.loads(data), head, row, per, statements)
            except Exception as exc:
                answer = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
            else:
                answer = b""
            try:
                conn.send_bytes(answer)
            except OSError:
                return
    finally:
        db.close()


def _insert(db: sqlite3.Connection, rows: list, head: str, row: str, per: int, statements: dict) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        for start in range(0, len(rows), per):
            chunk = rows[start:start + per]
            sql = statements.get(len(chunk))
            if sql is None:
                sql = statements[len(chunk)] = head + ", ".join([row] * len(chunk))
            db.execute(sql, list(itertools.chain.from_iterable(chunk)))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
