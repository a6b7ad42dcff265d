"""A real PostgreSQL server for a test: initdb into a temporary folder, started on a free port with
its unix socket in that folder, stopped by PID. Run as the `postgres` user when the tests run as root
(PostgreSQL refuses to run as root)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from procs import free_port, skip_or_fail_in_ci


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return str(Path(found[-1]).parent)
    initdb = shutil.which("initdb")
    return str(Path(initdb).parent) if initdb else None


class Postgres:
    def __init__(self):
        bindir = _bin_dir()
        if bindir is None:
            skip_or_fail_in_ci("PostgreSQL (initdb) is not installed, so the postgresql:// log store is not tested")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="edgerules-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.proc: subprocess.Popen | None = None
        self.uri = f"postgresql://edgerules@127.0.0.1:{self.port}/edgerules"

    def _as_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def start(self) -> "Postgres":
        if self.user:
            shutil.chown(self.root, self.user)
        log = self.root / "initdb.log"
        with open(log, "wb") as out:
            done = subprocess.run(self._as_user([f"{self.bindir}/initdb", "-D", str(self.data), "-U", "edgerules",
                                                 "--auth=trust", "-E", "UTF8", "--no-sync"]),
                                  stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {log.read_text()[-2000:]}")
        self.log = open(self.root / "server.log", "wb")
        # The server itself (not pg_ctl), so that its PID is ours to stop.
        self.proc = subprocess.Popen(self._as_user([f"{self.bindir}/postgres", "-D", str(self.data),
                                                    "-p", str(self.port), "-h", "127.0.0.1",
                                                    "-k", str(self.root), "-c", "fsync=off"]),
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run([f"{self.bindir}/pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        subprocess.run([f"{self.bindir}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "edgerules",
                        "edgerules"], check=True, capture_output=True)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # A "fast" shutdown of the server this object started (pg_ctl finds its PID in the
            # data folder): runuser does not pass SIGINT on, and SIGTERM ("smart") would wait
            # for every client to leave.
            subprocess.run(self._as_user([f"{self.bindir}/pg_ctl", "stop", "-D", str(self.data), "-m", "fast",
                                          "-w", "-t", "20"]), capture_output=True, timeout=30)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)
