"""The request log's storage, chosen by a URI: an SQLite file (the default) or PostgreSQL.

Both speak the same SQL (written with `?` placeholders; PostgreSQL's driver gets `%s`), so the
queries live once, in query.py. SQLite runs in one dedicated thread; PostgreSQL through psycopg 3's
async connection (the optional extra `postgres`).
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import logwriter

log = logging.getLogger("edgerules.gateway")

TABLE = "edgerules_requests"
# Every column a row carries, in the order build_row() makes them (seq is the store's own).
COLUMNS = ("id", "ts", "kind", "key", "path", "model", "route", "provider", "status", "error_code", "error",
           "attempts", "cache", "rules", "tags", "policy", "latency_ms", "ttft_ms", "input_tokens",
           "output_tokens", "cached_tokens", "cost_usd", "request_body", "answer_body")
_TYPES = {"ts": "DOUBLE PRECISION NOT NULL", "status": "INTEGER", "attempts": "INTEGER",
          "latency_ms": "DOUBLE PRECISION", "ttft_ms": "DOUBLE PRECISION", "input_tokens": "BIGINT",
          "output_tokens": "BIGINT", "cached_tokens": "BIGINT", "cost_usd": "DOUBLE PRECISION"}
_ROW = f"({', '.join('?' * len(COLUMNS))})"
_HEAD = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES "
_INSERT = _HEAD + _ROW
# SQLite takes up to this many rows in one INSERT. sqlite3 releases the GIL around every statement
# it steps, and executemany() steps once per row: 500 rows were 500 GIL hand-offs with the serving
# thread, each one making it wait (about 15% of the gateway's samples under load). One statement
# of many rows is one hand-off, and SQLite's own work then runs beside the serving thread.
ROWS_PER_INSERT = 100
# A batch of this many rows (a few hundred requests a second) moves SQLite's writes to a process of
# their own (logwriter.py), for as long as the store is open; smaller loads write in its thread.
PROCESS_ROWS = 64
WRITER_ANSWER_SECONDS = 120.0   # a writer process silent this long over one batch is given up
_INDEXES = (f"CREATE INDEX IF NOT EXISTS {TABLE}_ts ON {TABLE} (ts)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_id ON {TABLE} (id)",
            f"CREATE INDEX IF NOT EXISTS {TABLE}_key ON {TABLE} (key, ts)")
DEFAULT_FILE = "edgerules-requests.db"


class StoreError(Exception):
    """The store could not be opened or written; the message names the store, never a password."""


def _table(seq: str) -> str:
    columns = ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in COLUMNS)
    return f"CREATE TABLE IF NOT EXISTS {TABLE} (seq {seq}, {columns})"


def describe(uri: str) -> str:
    """The URI without its password, for messages."""
    scheme, sep, rest = uri.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
    return uri


def resolve_uri(uri: str, policy_path: str | None) -> str:
    """`auto` (the default) is an SQLite file named edgerules-requests.db in the policy's directory."""
    if uri.strip().lower() != "auto":
        return uri.strip()
    base = Path(policy_path or ".")
    folder = base if base.is_dir() else base.parent
    return "sqlite://" + str((folder / DEFAULT_FILE).resolve())


def check_uri(text: str) -> str:
    """A settings parser: the forms open_store() accepts."""
    uri = text.strip()
    scheme = uri.partition("://")[0].lower()
    if uri.lower() in ("auto", "none") or (scheme in ("sqlite", "postgresql", "postgres") and "://" in uri):
        return uri
    raise ValueError(f"not a log store: {text!r} (use auto, none, sqlite:///PATH or postgresql://...)")


def probe_store(setting: str, policy_path: str) -> str | None:
    """Why a log store given explicitly cannot be opened, before `serve` binds its port; None if
    it opens (`auto` is not probed: when it cannot be opened the gateway runs without a log)."""
    if setting.strip().lower() in ("auto", "none"):
        return None

    async def probe():
        store = await open_store(resolve_uri(setting, policy_path))
        await store.close()
    try:
        asyncio.run(probe())
    except StoreError as exc:
        return str(exc)
    return None


async def open_store(uri: str, writer: str = "thread"):
    """The store behind a URI, its table created; None for `none`. `writer`: where SQLite's writes
    run (auto, process, thread; see SqliteStore)."""
    scheme = uri.partition("://")[0].lower()
    if uri.lower() == "none":
        return None
    if scheme == "sqlite":
        store = SqliteStore(uri.partition("://")[2], writer)
    elif scheme in ("postgresql", "postgres"):
        store = PostgresStore(uri)
    else:
        raise StoreError(f"unknown log store scheme in '{describe(uri)}'")
    await store.open()
    return store


class SqliteStore:
    """One connection, used from one thread: sqlite3 objects must not cross threads."""

    dialect = "sqlite"

    def __init__(self, path: str, writer: str = "thread"):
        if not path:
            raise StoreError("an sqlite:// log store needs a path, e.g. sqlite:///var/lib/edgerules/requests.db")
        self.path = path
        self.name = f"sqlite://{path}"
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgerules-log")
        self._db: sqlite3.Connection | None = None
        self._statements: dict[int, str] = {}
        self._writer = None         # (process, pipe) of the writer process once started
        self._mode = writer          # auto: a process from PROCESS_ROWS rows a batch; process; thread
        self._writer_failed = False  # it could not start, or died: rows are written in the thread

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> None:
        try:
            await self._run(self._open)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the log store {self.name}: {exc}") from None

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")     # readers (the CLI, the admin API) never block the writer
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_table("INTEGER PRIMARY KEY AUTOINCREMENT"))
        for sql in _INDEXES:
            db.execute(sql)
        per = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(COLUMNS)
        self._per_insert = max(1, min(ROWS_PER_INSERT, per))
        self._db = db

    async def write(self, rows: list[tuple]) -> None:
        await self._run(self._write, rows)

    def _write(self, rows: list[tuple]) -> None:
        if (self._writer is None and not self._writer_failed and self._mode != "thread"
                and (self._mode == "process" or len(rows) >= PROCESS_ROWS)):
            self._start_writer()
        if self._writer is not None:
            pipe = self._writer[1]
            try:
                pipe.send_bytes(pickle.dumps(rows, protocol=5))
                if not pipe.poll(WRITER_ANSWER_SECONDS):   # SQLite's own lock wait is 30 s
                    raise TimeoutError("no answer")
                answer = pipe.recv_bytes()
            except (OSError, EOFError) as exc:
                log.warning("request log: the writer process of %s ended (%s); writing in the serving process",
                            self.name, type(exc).__name__)
                self._stop_writer()
                self._writer_failed = True
            else:
                if answer:
                    raise sqlite3.OperationalError(answer.decode("utf-8", "replace"))
                return
        logwriter._insert(self._db, rows, _HEAD, _ROW, self._per_insert, self._statements)

    def _start_writer(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        try:
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=logwriter.main, name="edgerules-log-writer", daemon=True,
                                  args=(self.path, theirs, _HEAD, _ROW, self._per_insert))
            process.start()
            theirs.close()
        except Exception as exc:   # no process can be started here (limits, a daemonic parent)
            log.warning("request log: no writer process for %s (%s); writing in the serving process", self.name, exc)
            self._writer_failed = True
            return
        self._writer = (process, mine)

    def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        process, pipe = writer
        try:
            pipe.send_bytes(b"")   # the last batch was answered: nothing is left in it
        except OSError:
            pass
        pipe.close()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join(1)

    def writer_pid(self) -> int | None:
        """The writer process's id while it runs (None: rows are written in this process)."""
        writer = self._writer
        return writer[0].pid if writer is not None else None

    async def execute(self, sql: str, params=()) -> int:
        return await self._run(lambda: self._db.execute(sql, params).rowcount)

    async def fetch(self, sql: str, params=()) -> list[dict]:
        return await self._run(lambda: [dict(r) for r in self._db.execute(sql, params).fetchall()])

    async def close(self) -> None:
        await self._run(self._stop_writer)
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=False)


class PostgresStore:
    """psycopg 3, one async connection (reopened after a failure); several gateways may share the table."""

    dialect = "postgresql"

    def __init__(self, uri: str):
        self.uri = uri
        self.name = describe(uri)
        self._conn = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError("a postgresql:// log store needs psycopg: pip install 'edgerules[postgres]'") from None
        conn = await self._connect()
        async with conn.transaction():
            await conn.execute(_table("BIGSERIAL PRIMARY KEY"))
            for sql in _INDEXES:
                await conn.execute(sql)

    async def _connect(self):
        import psycopg
        from psycopg.rows import dict_row

        if self._conn is None or self._conn.closed:
            try:
                self._conn = await psycopg.AsyncConnection.connect(self.uri, autocommit=True, row_factory=dict_row)
            except psycopg.Error as exc:
                raise StoreError(f"cannot connect to the log store {self.name}: "
                                 f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from None
        return self._conn

    async def _guarded(self, work):
        import psycopg

        async with self._lock:
            conn = await self._connect()
            try:
                return await work(conn)
            except psycopg.OperationalError:
                await conn.close()   # the next call reconnects
                raise

    async def write(self, rows: list[tuple]) -> None:
        async def work(conn):
            async with conn.transaction():
                async with conn.cursor() as cur:
                    await cur.executemany(_pg(_INSERT), rows)
        await self._guarded(work)

    async def execute(self, sql: str, params=()) -> int:
        async def work(conn):
            cur = await conn.execute(_pg(sql), params)
            return cur.rowcount
        return await self._guarded(work)

    async def fetch(self, sql: str, params=()) -> list[dict]:
        async def work(conn):
            cur = await conn.execute(_pg(sql), params)
            return await cur.fetchall()
        return await self._guarded(work)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


def _pg(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")
