"""Test helpers that run real processes (the fake upstream, the gateway) on 127.0.0.1 and stop them by PID."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _console_script() -> str:
    """The installed `edgerules` console script: beside this Python's executable, else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "edgerules")
    found = beside if os.access(beside, os.X_OK) else shutil.which("edgerules")
    if not found:
        raise RuntimeError("the `edgerules` console script is not installed: pip install -e '.[test,bench]'")
    return found


EDGERULES = _console_script()
# CI sets CI=true: there a missing prerequisite (redis-server, LANGUAGE.md...) fails instead of skipping.
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip the test here; under CI=true fail it, so that CI never passes by skipping."""
    import pytest

    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a test may not be skipped)", pytrace=False)
    pytest.skip(reason)


def wait_until(condition, timeout: float = 30.0, interval: float = 0.02, what: str = "the condition"):
    """Poll `condition()` until it returns something truthy, and return that.

    Tests wait on the event itself (a counter, a log line, an admin answer) with a generous
    deadline, never on a fixed sleep: on a loaded machine the event is only later, not wrong.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child process with its output in a temporary file; stopped by its own PID only."""

    def __init__(self, popen: subprocess.Popen, log):
        self.popen = popen
        self.pid = popen.pid
        self._log = log
        self._final_output: str | None = None

    def output(self) -> str:
        """Everything the process printed so far (stdout and stderr), also after stop()."""
        if self._final_output is not None:
            return self._final_output
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        if self._final_output is None:
            self._final_output = self.output()
            self._log.close()
        return self.popen.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_process(argv: list[str], ready_url: str, timeout: float = 10.0, env: dict | None = None,
                  cls: type[Process] = Process, cwd: str | None = None, **kw) -> Process:
    """Start argv and wait until ready_url answers 200; on failure stop it and raise with its output."""
    log = tempfile.TemporaryFile()
    popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, cwd=cwd)
    proc = cls(popen, log, **kw)
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise RuntimeError(f"{argv} exited with {popen.returncode} before it was ready:\n"
                                   f"{proc.output()}")
            try:
                if client.get(ready_url).status_code == 200:
                    return proc
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"{argv} was not ready at {ready_url} within {timeout:g}s:\n{proc.output()}")


class UpstreamProc(Process):
    def __init__(self, popen: subprocess.Popen, log, port: int):
        super().__init__(popen, log)
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.url = self.base + "/v1"
        self._client = httpx.Client(base_url=self.base, trust_env=False, timeout=5.0)

    def control(self, **knobs) -> dict:
        resp = self._client.post("/_control", json=knobs)
        resp.raise_for_status()
        return resp.json()["faults"]

    def stats(self) -> dict:
        return self._client.get("/_stats").raise_for_status().json()

    def reset(self) -> None:
        self._client.post("/_reset").raise_for_status()

    def stop(self, timeout: float = 5.0) -> int | None:
        self._client.close()
        return super().stop(timeout)


def start_upstream(*args: str, timeout: float = 10.0) -> UpstreamProc:
    """`python -m edgerules.drills.upstream --port <free> *args`, ready to serve."""
    for attempt in range(3):
        port = free_port()
        argv = [sys.executable, "-m", "edgerules.drills.upstream", "--port", str(port), *args]
        try:
            return start_process(argv, f"http://127.0.0.1:{port}/healthz", timeout,
                                 cls=UpstreamProc, port=port)
        except RuntimeError as exc:
            # Another process may take the free port before the child binds it; try another one.
            if "address already in use" not in str(exc).lower() or attempt == 2:
                raise
    raise AssertionError("unreachable")


# TCP states as /proc/net/tcp writes them; the end that closes a connection first goes through
# FIN_WAIT1, FIN_WAIT2 or CLOSING to TIME_WAIT.
ESTABLISHED, LISTEN = "01", "0A"
CLOSED_FIRST = frozenset({"04", "05", "06", "0B"})


def _tcp_sockets():
    """(local address, remote address, state, inode) of every IPv4 TCP socket (Linux)."""
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            yield fields[1], fields[2], fields[3], fields[9]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def client_connections(port: int, pid: int) -> list[str]:
    """The states of process pid's sockets connected to 127.0.0.1:port."""
    remote, inodes = f"0100007F:{port:04X}", _socket_inodes(pid)
    return [state for _, peer, state, inode in _tcp_sockets() if peer == remote and inode in inodes]


def server_ends(port: int) -> list[str]:
    """The states of the accepted sockets of a server on 127.0.0.1:port (its listening socket aside).

    A server end in one of CLOSED_FIRST means the server closed that connection first; when the
    client closes first, the server end soon leaves no trace."""
    local = f"0100007F:{port:04X}"
    return [state for address, _, state, _ in _tcp_sockets() if address == local and state != LISTEN]


HOSTILE = Path(__file__).with_name("hostile_upstream.py")


def start_hostile():
    """tests/hostile_upstream.py on a free port; `.url` is its /v1 base."""
    port = free_port()
    proc = start_process([sys.executable, str(HOSTILE), "--port", str(port)],
                         f"http://127.0.0.1:{port}/healthz", 15.0)
    proc.base, proc.url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/v1"
    return proc
