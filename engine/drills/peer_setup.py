"""Installing, starting and loading the servers of edgerules.drills.peers, by PID and bounded.

The peers go into throwaway folders under cache_dir(); each server is started with its output in
a temporary file and stopped by its PID; load comes from wrk (or a bounded aiohttp loop) with the
same body and headers for every target.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import gatewaybench as gb


class PeerUnavailable(Exception):
    """A peer could not be installed or started here; the message says why."""


# ---- installing the peers ---------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("EDGERULES_PEERS_CACHE") or Path.home() / ".cache" / "edgerules-peers")


def install_litellm(cache: Path, spec: str = "litellm[proxy]", say=print) -> Path:
    """The `litellm` executable of a venv under cache, created with `pip install SPEC` once."""
    venv = cache / "litellm-venv"
    exe = venv / "bin" / "litellm"
    if exe.exists():
        return exe
    say(f"installing {spec} into {venv} (once) ...")
    _install(f"pip install {spec}", [[sys.executable, "-m", "venv", str(venv)],
                                     [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", spec]])
    if not exe.exists():
        raise PeerUnavailable(f"pip install {spec} left no {exe}")
    return exe


def install_portkey(cache: Path, spec: str = "@portkey-ai/gateway", say=print) -> Path:
    """The gateway's start-server.js under cache/portkey, from `npm install SPEC` once."""
    folder = cache / "portkey"
    entry = folder / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if entry.exists():
        return entry
    if not shutil.which("npm") or not shutil.which("node"):
        raise PeerUnavailable("Portkey's gateway needs node and npm (apt-get install nodejs npm)")
    say(f"installing {spec} into {folder} (once) ...")
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "package.json").exists():
        (folder / "package.json").write_text('{"name": "edgerules-peers-portkey", "private": true}\n')
    _install(f"npm install {spec}", [["npm", "install", "--no-audit", "--no-fund", spec]], cwd=folder)
    if not entry.exists():
        raise PeerUnavailable(f"npm install {spec} left no {entry}")
    return entry


def _install(what: str, commands: list[list[str]], cwd: Path | None = None) -> None:
    """Run an install's commands in order (30 minutes each at most); PeerUnavailable naming `what`
    and the end of its error output when one fails."""
    try:
        for command in commands:
            subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True, timeout=1800)
    except subprocess.CalledProcessError as exc:
        raise PeerUnavailable(f"{what} failed: {(exc.stderr or '')[-800:]}") from None
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"{what} took over 30 minutes") from None


def peer_version(name: str, cache: Path) -> str:
    try:
        if name == "litellm":
            py = cache / "litellm-venv" / "bin" / "python"
            out = subprocess.run([str(py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                                 capture_output=True, text=True, timeout=60)
            return out.stdout.strip() or "?"
        pkg = cache / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "package.json"
        return json.loads(pkg.read_text())["version"]
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return "?"


# ---- processes --------------------------------------------------------------------------------

def start_server(argv, health: str, env=None, timeout: float = 60.0, cwd=None) -> subprocess.Popen:
    """Start a server and wait for its health URL (gatewaybench's, failing as PeerUnavailable)."""
    return gb.start_server(argv, health, timeout, env=env, cwd=cwd, error=PeerUnavailable)


def output_tail(proc) -> str:
    return gb.output_tail(proc)


def stop_server(proc: subprocess.Popen) -> None:
    gb._stop(proc)


# ---- load -------------------------------------------------------------------------------------

_WRK_LUA = """wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
{stop}"""
_WRK_STOP = """local count = 0
response = function(status, headers, body)
    count = count + 1
    if count >= {per_thread} then wrk.thread:stop() end
end
"""


def wrk_script(body: str, headers: dict[str, str], max_requests: int | None = None, threads: int = 1) -> str:
    """wrk's Lua: the POST with its headers; with max_requests each thread stops after its share."""
    for text in (body, *headers.values()):
        if "]==]" in text:
            raise ValueError("a body or header holds ']==]', which ends a Lua long string")
    lines = "\n".join(f"wrk.headers[ [==[{k}]==] ] = [==[{v}]==]" for k, v in headers.items())
    stop = _WRK_STOP.format(per_thread=max(1, -(-max_requests // threads))) if max_requests else ""
    return _WRK_LUA.format(body=body, headers=lines, stop=stop)


def parse_wrk(out: str) -> dict:
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk gave no figures: {out.strip()[-500:]}")
    total = re.search(r"(\d+) requests in", out)
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(x) for x in m.groups()) if m else 0
    return {"rps": float(found.group(1)), "p50_ms": gb._wrk_ms(out, "50%"), "p99_ms": gb._wrk_ms(out, "99%"),
            "errors": errors, "requests": int(total.group(1)) if total else None}


def load(url: str, body: str, headers: dict, connections: int, seconds: float,
         max_requests: int | None = None) -> dict:
    """Bounded load on one URL: wrk when installed (for whole seconds, and at most max_requests),
    else an aiohttp loop in this process bounded the same way. With max_requests, wrk still
    divides by the whole duration, so req/s is then a floor (the harness's own test uses it)."""
    if not shutil.which("wrk"):
        return asyncio.run(_aio_load(url, body, headers, connections, seconds, max_requests))
    threads = min(2, connections)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(wrk_script(body, headers, max_requests, threads))
    whole = max(1, round(seconds))
    try:
        done = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{whole}s", "--timeout", "10s",
                               "--latency", "-s", f.name, url], capture_output=True, text=True, timeout=whole + 60)
    finally:
        os.unlink(f.name)
    return parse_wrk(done.stdout + done.stderr)


async def _aio_load(url, body, headers, connections, seconds, max_requests) -> dict:
    import aiohttp
    latencies, errors, sent = [], 0, 0
    cap = max_requests or 10**9
    stop_at = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        async def worker():
            nonlocal errors, sent
            while sent < cap and time.perf_counter() < stop_at:
                sent += 1
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body.encode(), headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50_ms": _quantile_ms(latencies, 0.5),
            "p99_ms": _quantile_ms(latencies, 0.99), "errors": errors, "requests": len(latencies)}


def _quantile_ms(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


_SHOWN = ("x-edgerules-", "x-ratelimit-", "x-portkey-last-used", "x-portkey-retry", "x-litellm-model-group",
          "x-litellm-model-api-base")


def warm(url: str, body: str, headers: dict, count: int = 20) -> dict[str, str]:
    """Sequential requests before measuring (imports, pools, LiteLLM's first-call setup). Every
    answer must be a 200, else the target is misconfigured and its figures would lie. Returns the
    last answer's routing and limit headers, which show what the target did with the request."""
    for _ in range(count):
        req = urllib.request.Request(url, data=body.encode(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                resp.read()
                shown = {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith(_SHOWN)}
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{url} answered {exc.code}: {exc.read()[:500]!r}") from None
    return shown


def settle(pid: int, quiet: float = 0.3, timeout: float = 30.0) -> bool:
    """Wait until the process has (nearly) stopped using CPU for `quiet` seconds, at most
    `timeout`. A server slower than the load keeps working through the requests wrk abandoned
    when it stopped; measuring the next target (or the next run of this one) before that backlog
    is gone would charge it to them (LiteLLM at 32 connections is seconds behind)."""
    deadline = time.monotonic() + timeout
    last = gb._cpu_seconds(pid)
    if last is None:
        return False
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = gb._cpu_seconds(pid)
        if now is None or now - last <= 0.1 * quiet:
            return True
        last = now
    return False


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
