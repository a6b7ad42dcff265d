"""`--workers N`: every reload reaches every worker process, and each keeps its state.

uvicorn's supervisor answers SIGHUP by replacing its workers (counters and cache lost), and
`POST /admin/reload` reaches the one worker that accepted the connection. Here the supervisor
forwards SIGHUP to each worker instead, and a worker given `POST /admin/reload` asks the
supervisor (SIGUSR1) to do the same, then waits for every worker's report. Supervisor and workers
meet in a private directory: `fanout.json` (the supervisor's: reload number, reason, worker pids)
and one `worker-PID.json` a worker (what its last fanned-out reload did).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import orjson
from uvicorn.supervisors.multiprocess import Multiprocess

ENV_FANOUT_DIR = "EDGERULES_FANOUT_DIR"   # set by the supervisor for its workers; not a setting
REPORT_WAIT_SECONDS = 60.0
WORKER_HEADER = b"x-edgerules-worker"

log = logging.getLogger("edgerules.workers")


def _write(path: Path, data: dict) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_bytes(orjson.dumps(data))
    os.replace(partial, path)     # readers see the old record or the new one, never half of one


def _read(path: Path) -> dict | None:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


class Supervisor(Multiprocess):
    """uvicorn's supervisor, except that SIGHUP reloads every worker in place."""

    def __init__(self, config, sockets, directory: str):
        super().__init__(config, sockets)
        self.fanout = Path(directory) / "fanout.json"
        self.generation = 0
        self._publish("start")

    def init_processes(self) -> None:
        super().init_processes()
        self._publish("start")

    def handle_hup(self) -> None:
        self._fan_out("SIGHUP")

    def handle_usr1(self) -> None:
        self._fan_out("POST /admin/reload")

    def handle_usr2(self) -> None:
        self._fan_out("POST /admin/reload?force=1", force=True)

    def _publish(self, reason: str, force: bool = False) -> list[int]:
        pids = [p.pid for p in self.processes if p.pid is not None]
        _write(self.fanout, {"generation": self.generation, "reason": reason, "force": force, "pids": pids,
                             "supervisor": os.getpid()})
        return pids

    def _fan_out(self, reason: str, force: bool = False) -> None:
        self.generation += 1
        pids = self._publish(reason, force)    # written before the signals, so each worker reads this reload's number
        log.info("%s: reloading the policy in workers %s", reason, ", ".join(map(str, pids)))
        for pid in pids:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass    # a worker that just died; uvicorn starts its replacement, which loads afresh


class WorkerFanout:
    """In a worker process: run the reloads the supervisor fans out, and start one for all workers."""

    def __init__(self, directory: str, reloader):
        self.directory = Path(directory)
        self.fanout = self.directory / "fanout.json"
        self.reloader = reloader
        self.pid = os.getpid()

    def on_sighup(self) -> None:
        asyncio.get_running_loop().create_task(self._reload_signalled())

    async def _reload_signalled(self) -> None:
        record = await asyncio.to_thread(_read, self.fanout) or {"generation": 0, "reason": "SIGHUP"}
        result = await self.reloader.reload(record["reason"], force=record.get("force", False))
        report = {"pid": self.pid, "generation": record["generation"], **result}
        await asyncio.to_thread(_write, self.directory / f"worker-{self.pid}.json", report)

    async def reload_all(self, force: bool = False) -> dict:
        """Ask the supervisor to reload every worker; what each did, once all have reported."""
        before = await asyncio.to_thread(_read, self.fanout)
        os.kill(before["supervisor"], signal.SIGUSR2 if force else signal.SIGUSR1)
        deadline = time.monotonic() + REPORT_WAIT_SECONDS
        while True:
            record, reports = await asyncio.to_thread(self._reports, before["generation"])
            if record is not None and all(r is not None for r in reports.values()):
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        workers = [report or {"pid": pid, "ok": False,
                              "error": {"message": f"worker {pid} did not report within {REPORT_WAIT_SECONDS:g}s"}}
                   for pid, report in reports.items()] if record else []
        for report in workers:
            report.pop("generation", None)
        return {"ok": bool(workers) and all(w["ok"] for w in workers),
                "version": self.reloader.gw.live.policy.version, "workers": workers}

    def _reports(self, before: int) -> tuple[dict | None, dict[int, dict | None]]:
        record = _read(self.fanout)
        if record is None or record["generation"] <= before:
            return None, {}
        reports = {}
        for pid in record["pids"]:
            report = _read(self.directory / f"worker-{pid}.json")
            reports[pid] = report if report and report["generation"] >= record["generation"] else None
        return record, reports


class WorkerHeader:
    """ASGI middleware: `x-edgerules-worker: PID` on every answer, so a client sees which worker served it."""

    def __init__(self, app):
        self.app = app
        self.header = (WORKER_HEADER, str(os.getpid()).encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_tagged(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, send_tagged)
