"""Whole-request figures: direct to the upstream, a bare pass-through, and `edgerules serve`.

Everything runs on 127.0.0.1 in processes this module starts and stops by PID: the fake
upstream (`edgerules upstream`), the bare Starlette+aiohttp pass-through, and the gateway on the
given policy plus one provider pointing at the upstream. Load comes from wrk when installed,
else from edgerules.drills.loadgen in its own process. Every figure of one call is taken in one run, so
the ratios are comparable even on a noisy machine.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_PROVIDER = "bench_upstream"
# README's scenario tables sit between these lines; `edgerules bench ... --scenarios ...
# --write-readme README.md` rewrites them with the command that made them.
README_BEGIN = "<!-- scenarios:begin (edgerules bench rules/ --gateway --scenarios all --write-readme README.md) -->"
README_END = "<!-- scenarios:end -->"
_WRK_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""


@dataclass
class Figure:
    target: str          # direct | passthrough | edgerules
    mode: str            # json | stream
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float | None = None   # CPU time the serving process spent per request (None off Linux)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(argv: list[str], health: str, timeout: float = 20.0, *, env=None, cwd=None,
                 error: type[Exception] = RuntimeError) -> subprocess.Popen:
    """Start a server and wait for its health URL. Its output goes to a file: a pipe nobody reads
    would fill and block a chatty server mid-measurement."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd)
    proc.log = log
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise error(f"{argv[0]} exited with {proc.returncode}: {output_tail(proc)}")
        try:
            with urllib.request.urlopen(health, timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.05)
    _stop(proc)
    raise error(f"{argv[0]} did not answer {health} within {timeout:.0f}s: {output_tail(proc)}")


def output_tail(proc) -> str:
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")[-2000:]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    log = getattr(proc, "log", None)
    if log is not None and not log.closed:
        log.close()


def bench_policy_dir(rules: str, upstream_url: str) -> str:
    """A copy of the policy plus one provider that points at the benchmark's upstream."""
    out = Path(tempfile.mkdtemp(prefix="edgerules-bench-"))
    src = Path(rules)
    files = sorted(src.rglob("*.rules")) if src.is_dir() else [src]
    for i, f in enumerate(files):
        shutil.copy(f, out / f"{i:03d}-{f.name}")
    (out / "zzz-bench.rules").write_text(f'provider {BENCH_PROVIDER} {{ url "{upstream_url}" }}\n')
    return str(out)


def _load(url: str, body: bytes, connections: int, seconds: float) -> dict:
    if shutil.which("wrk"):
        return _wrk(url, body, connections, seconds)
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(body)
    try:
        out = subprocess.run([sys.executable, "-m", "edgerules.drills.loadgen", url, "--body", f.name,
                              "--connections", str(connections), "--seconds", str(seconds)],
                             capture_output=True, text=True, timeout=seconds + 60)
        return json.loads(out.stdout)
    finally:
        os.unlink(f.name)


def _wrk(url: str, body: bytes, connections: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_LUA.format(body=body.decode()))
    try:
        threads = min(2, connections)
        whole = max(1, round(seconds))   # wrk takes whole seconds
        done = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{whole}s", "--latency",
                               "-s", f.name, url], capture_output=True, text=True, timeout=whole + 60)
    finally:
        os.unlink(f.name)
    out = done.stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk gave no figures: {(done.stderr or out).strip()[-500:]}")
    rps = float(found.group(1))
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors += sum(int(x) for x in m.groups()) if m else 0
    return {"rps": rps, "p50_ms": _wrk_ms(out, "50%"), "p99_ms": _wrk_ms(out, "99%"), "errors": errors,
            "requests": int(total.group(1)) if total else None}


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process and of its live child processes (the request log's writer, a
    reload helper), from /proc: steadier than throughput on a shared machine."""
    own = _process_cpu(pid)
    if own is None:
        return None
    return own + sum(_process_cpu(child) or 0.0 for child in _children(pid))


def _process_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found


def _wrk_ms(out: str, pct: str) -> float:
    m = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run(rules: str = "rules/", seconds: float = 3.0, connections=(1, 32), modes=("json", "stream"),
        progress=None) -> dict:
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    py = sys.executable
    up_port, pt_port, gw_port = _free_port(), _free_port(), _free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    procs = []
    policy_dir = bench_policy_dir(rules, upstream_url)
    try:
        say("starting the upstream, the pass-through and the gateway ...")
        procs.append(start_server([py, "-m", "edgerules.drills.upstream", "--port", str(up_port)],
                            f"http://127.0.0.1:{up_port}/healthz"))
        procs.append(start_server([py, "-m", "edgerules.drills.passthrough", "--upstream", upstream_url, "--port", str(pt_port)],
                            f"http://127.0.0.1:{pt_port}/healthz"))
        procs.append(start_server([py, "-m", "edgerules", "serve", "--rules", policy_dir, "--port", str(gw_port),
                             "--no-watch", "--log-level", "warning"], f"http://127.0.0.1:{gw_port}/healthz"))
        targets = {
            "direct": (f"http://127.0.0.1:{up_port}/v1/chat/completions", procs[0].pid),
            "passthrough": (f"http://127.0.0.1:{pt_port}/v1/chat/completions", procs[1].pid),
            "edgerules": (f"http://127.0.0.1:{gw_port}/v1/chat/completions", procs[2].pid),
        }
        figures = []
        for mode in modes:
            body = json.dumps({"model": f"{BENCH_PROVIDER}/bench", "stream": mode == "stream",
                               "messages": [{"role": "user", "content": "benchmark this request"}]}).encode()
            for conns in connections:
                for name, (url, pid) in targets.items():
                    _load(url, body, conns, min(1.0, seconds))   # warm up pools and caches
                    say(f"  {mode:6} {conns:>3} connections  {name:11} ...")
                    cpu0 = _cpu_seconds(pid)
                    r = _load(url, body, conns, seconds)
                    cpu1 = _cpu_seconds(pid)
                    n = r.get("requests") or r["rps"] * seconds
                    cpu = (cpu1 - cpu0) / n * 1e6 if cpu0 is not None and cpu1 is not None and n else None
                    figures.append(Figure(name, mode, conns, r["rps"], r["p50_ms"], r["p99_ms"], r["errors"], cpu))
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(policy_dir, ignore_errors=True)
    return {"loadgen": "wrk" if shutil.which("wrk") else "edgerules.drills.loadgen", "seconds": seconds,
            "figures": [asdict(f) for f in figures], "ratios": ratios(figures)}


def ratios(figures: list[Figure]) -> list[dict]:
    by = {(f.target, f.mode, f.connections): f for f in figures}
    out = []
    for (target, mode, conns), f in sorted(by.items()):
        if target != "edgerules":
            continue
        direct, bare = by.get(("direct", mode, conns)), by.get(("passthrough", mode, conns))
        out.append({
            "mode": mode, "connections": conns,
            "edgerules_vs_direct": f.rps / direct.rps if direct else None,
            "passthrough_vs_direct": bare.rps / direct.rps if bare and direct else None,
            "edgerules_vs_passthrough": f.rps / bare.rps if bare else None,
            "added_p50_ms_vs_direct": f.p50_ms - direct.p50_ms if direct else None,
            "added_p50_ms_vs_passthrough": f.p50_ms - bare.p50_ms if bare else None,
            # CPU per request of the serving process: the pass-through's over ours, a throughput
            # ratio for a CPU-bound server that the machine's noise moves much less.
            "cpu_passthrough_vs_edgerules": (bare.cpu_us / f.cpu_us) if bare and bare.cpu_us and f.cpu_us else None,
        })
    return out


def render(result: dict) -> str:
    lines = ["| mode | conns | target | req/s | p50 ms | p99 ms | CPU µs/req | errors |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for f in result["figures"]:
        cpu = f"{f['cpu_us']:.0f}" if f.get("cpu_us") else "-"
        lines.append(f"| {f['mode']} | {f['connections']} | {f['target']} | {f['rps']:.0f} | "
                     f"{f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {cpu} | {f['errors']} |")
    lines += ["", "| mode | conns | edgerules/direct | pass-through/direct | edgerules/pass-through | "
                  "CPU: pass-through/edgerules | added p50 vs direct (ms) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["ratios"]:
        cpu = f"{r['cpu_passthrough_vs_edgerules']:.2f}x" if r.get("cpu_passthrough_vs_edgerules") else "-"
        lines.append(f"| {r['mode']} | {r['connections']} | {r['edgerules_vs_direct']:.2f}x | "
                     f"{r['passthrough_vs_direct']:.2f}x | {r['edgerules_vs_passthrough']:.2f}x | {cpu} | "
                     f"{r['added_p50_ms_vs_direct']:+.3f} |")
    return "\n".join(lines)




# ---- scenarios: policies that exercise the real work ------------------------------------------
#
# One gateway serves one policy holding a rule per scenario, chosen by the request's model, so
# every scenario meets the same process (warm, same GC state) and only its own rule's work:
#   routing  a route and nothing else
#   limit    `limit requests 1_000_000_000 per 1m`: admits every request, so each pays the limiter
#   tokens   `limit tokens 1_000_000_000_000 per 1m`: a token budget (estimate in, usage out)
#   cache    `cache ttl 1h`, temperature 0: after the first request every answer is a HIT
#   stream   the routing rule with "stream": true; read as SSE: time to first event, events/s
# Direct and the pass-through get the same bodies (their upstream ignores the model's name).

SCENARIOS = ("routing", "limit", "tokens", "cache", "stream")
_SCENARIO_RULES = """
rule bench_routing {{
    when model == "routing" or model == "stream"
    route {p}/bench
}}

rule bench_limit {{
    when model == "limit"
    limit requests 1_000_000_000 per 1m
    route {p}/bench
}}

rule bench_tokens {{
    when model == "tokens"
    limit tokens 1_000_000_000_000 per 1m
    route {p}/bench
}}

rule bench_cache {{
    when model == "cache"
    cache ttl 1h
    route {p}/bench
}}
"""


def scenario_names(text: str) -> tuple[str, ...]:
    """'all' or a comma-separated list of SCENARIOS; ValueError naming the unknown one."""
    if text.strip() == "all":
        return SCENARIOS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}: choose from all, {', '.join(SCENARIOS)}")
    if not names:
        raise ValueError("--scenarios takes all or a list such as routing,limit")
    return names


def scenario_policy_dir(upstream_url: str) -> str:
    out = Path(tempfile.mkdtemp(prefix="edgerules-bench-"))
    (out / "bench.rules").write_text(f'provider {BENCH_PROVIDER} {{ url "{upstream_url}" }}\n'
                                     + _SCENARIO_RULES.format(p=BENCH_PROVIDER))
    return str(out)


def scenario_body(name: str) -> bytes:
    body = {"model": name, "messages": [{"role": "user", "content": "benchmark this request"}]}
    if name == "stream":
        body["stream"] = True
    if name == "cache":
        body["temperature"] = 0
    return json.dumps(body).encode()


def _load_stream(url: str, body: bytes, connections: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        f.write(body)
    try:
        out = subprocess.run([sys.executable, "-m", "edgerules.drills.loadgen", url, "--body", f.name, "--stream",
                              "--connections", str(connections), "--seconds", str(seconds)],
                             capture_output=True, text=True, timeout=seconds + 60)
        if out.returncode != 0:
            raise RuntimeError(f"loadgen failed: {out.stderr.strip()[-500:]}")
        return json.loads(out.stdout)
    finally:
        os.unlink(f.name)


def _warm(url: str, body: bytes, count: int = 20) -> None:
    """A few sequential requests: imports, pools, and the cache scenario's one MISS."""
    for _ in range(count):
        req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


def run_scenarios(names=SCENARIOS, seconds: float = 2.0, connections=(1, 16, 64), progress=None,
                  rounds: int = 1, serve_args: tuple = ()) -> dict:
    """Every scenario at every connection count against direct, the pass-through and edgerules,
    all in one run. JSON scenarios load with wrk when installed (else loadgen); stream with loadgen,
    which reads the events. With `rounds` > 1 the three targets take turns that many times and each
    figure is the median of its rounds (a shared machine's bursts then hit every target alike).
    Returns {"rows": [...], "targets": [...], ...}: per scenario and connections, each target's
    figures and edgerules' ratios and added latencies; the targets of issue #15 met or missed.
    `serve_args` are added to `edgerules serve`'s (e.g. ("--log-store", "none") for an A/B)."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    py = sys.executable
    up_port, pt_port, gw_port = _free_port(), _free_port(), _free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    procs = []
    policy_dir = scenario_policy_dir(upstream_url)
    rows = []
    try:
        say("starting the upstream, the pass-through and the gateway ...")
        procs.append(start_server([py, "-m", "edgerules.drills.upstream", "--port", str(up_port)],
                            f"http://127.0.0.1:{up_port}/healthz"))
        procs.append(start_server([py, "-m", "edgerules.drills.passthrough", "--upstream", upstream_url,
                             "--port", str(pt_port)], f"http://127.0.0.1:{pt_port}/healthz"))
        procs.append(start_server([py, "-m", "edgerules", "serve", "--rules", policy_dir, "--port", str(gw_port),
                             "--no-watch", "--log-level", "warning", *serve_args], f"http://127.0.0.1:{gw_port}/healthz"))
        targets = {name: (f"http://127.0.0.1:{port}/v1/chat/completions", proc.pid)
                   for name, port, proc in zip(("direct", "passthrough", "edgerules"),
                                               (up_port, pt_port, gw_port), procs)}
        for scenario in names:
            body = scenario_body(scenario)
            for url, _ in targets.values():
                _warm(url, body)
            for conns in connections:
                runs = {target: [] for target in targets}
                for turn in range(rounds):
                    for target, (url, pid) in targets.items():
                        say(f"  {scenario:8} {conns:>3} connections  {target:11} round {turn + 1}/{rounds} ...")
                        cpu0 = _cpu_seconds(pid)
                        r = (_load_stream(url, body, conns, seconds) if scenario == "stream"
                             else _load(url, body, conns, seconds))
                        cpu1 = _cpu_seconds(pid)
                        n = r.get("requests") or r["rps"] * seconds
                        r["cpu_us"] = ((cpu1 - cpu0) / n * 1e6 if cpu0 is not None and cpu1 is not None and n
                                       else None)
                        runs[target].append(r)
                rows.append(scenario_row(scenario, conns, {t: _median_run(rs) for t, rs in runs.items()}))
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(policy_dir, ignore_errors=True)
    return {"loadgen": "wrk" if shutil.which("wrk") else "edgerules.drills.loadgen",
            "stream_loadgen": "edgerules.drills.loadgen", "seconds": seconds, "rounds": rounds,
            "connections": list(connections), "rows": rows, "targets": target_checks(rows)}


def _median_run(runs: list[dict]) -> dict:
    """One target's figures over its rounds: each the median of its rounds; errors and requests summed."""
    out = dict(runs[-1])
    for name, value in runs[-1].items():
        values = [r[name] for r in runs if isinstance(r.get(name), (int, float))]
        if name in ("errors", "requests"):
            out[name] = sum(values)
        elif values and isinstance(value, (int, float)):
            out[name] = statistics.median(values)
    return out


# Issue #15's targets for the whole request, each read from one row of a run: (scenario,
# connections, figure, bound, what it says). A request limit every request meets is the path
# measured; the routing-only row beside it shows what the limit itself costs.
TARGETS = (
    ("limit", 32, "x_passthrough", (">=", 0.85), "throughput with a request limit, x the bare pass-through, 32 connections"),
    ("limit", 1, "added_p50_ms_vs_direct", ("<=", 0.4), "added p50 over direct (ms), 1 connection"),
    ("limit", 16, "added_p99_ms_vs_passthrough", ("<=", 2.0), "added p99 over the pass-through's (ms), 16 connections"),
)


def target_checks(rows: list[dict]) -> list[dict]:
    """Each target whose row was measured (its scenario and connection count were in the run)."""
    by = {(r["scenario"], r["connections"]): r for r in rows}
    out = []
    for scenario, conns, figure, (op, bound), what in TARGETS:
        row = by.get((scenario, conns))
        if row is None or row.get(figure) is None:
            continue
        value = row[figure]
        routing = by.get(("routing", conns), {}).get(figure)
        out.append({"target": what, "scenario": scenario, "connections": conns, "figure": figure,
                    "bound": f"{op} {bound:g}", "value": value, "routing_value": routing,
                    "met": value >= bound if op == ">=" else value <= bound})
    return out


def scenario_row(scenario: str, conns: int, figures: dict) -> dict:
    d, p, e = figures["direct"], figures["passthrough"], figures["edgerules"]
    row = {"scenario": scenario, "connections": conns, "figures": figures,
           "rps": e["rps"], "errors": sum(f["errors"] for f in figures.values()),
           "x_direct": e["rps"] / d["rps"] if d["rps"] else None,
           "x_passthrough": e["rps"] / p["rps"] if p["rps"] else None,
           "added_p50_ms_vs_direct": e["p50_ms"] - d["p50_ms"],
           "added_p50_ms_vs_passthrough": e["p50_ms"] - p["p50_ms"],
           "added_p99_ms_vs_direct": e["p99_ms"] - d["p99_ms"],
           "added_p99_ms_vs_passthrough": e["p99_ms"] - p["p99_ms"],
           "cpu_us": e.get("cpu_us"), "cpu_us_passthrough": p.get("cpu_us")}
    if scenario == "stream":
        row.update(ttft_p50_ms=e.get("ttft_p50_ms"), ttft_p50_ms_passthrough=p.get("ttft_p50_ms"),
                   ttft_p50_ms_direct=d.get("ttft_p50_ms"),
                   events_per_s=e.get("events_per_s"), events_per_s_passthrough=p.get("events_per_s"))
    return row


def render_scenarios(result: dict) -> str:
    def cpu(v):
        return f"{v:.0f}" if v else "-"
    lines = ["| scenario | conns | edgerules req/s | x direct | x pass-through | added p50 vs direct / pass-through (ms) "
             "| added p99 vs direct / pass-through (ms) | CPU µs/req edgerules / pass-through | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['scenario']} | {r['connections']} | {r['rps']:,.0f} | {r['x_direct']:.2f}x | "
                     f"{r['x_passthrough']:.2f}x | {r['added_p50_ms_vs_direct']:+.2f} / "
                     f"{r['added_p50_ms_vs_passthrough']:+.2f} | {r['added_p99_ms_vs_direct']:+.2f} / "
                     f"{r['added_p99_ms_vs_passthrough']:+.2f} | {cpu(r['cpu_us'])} / "
                     f"{cpu(r['cpu_us_passthrough'])} | {r['errors']} |")
    if result.get("targets"):
        lines += ["", "| target (issue #15) | bound | measured | routing only | met |", "|---|---:|---:|---:|---|"]
        for t in result["targets"]:
            routing = f"{t['routing_value']:.2f}" if t["routing_value"] is not None else "-"
            lines.append(f"| {t['target']} | {t['bound']} | {t['value']:.2f} | {routing} | "
                         f"{'yes' if t['met'] else 'no'} |")
    streams = [r for r in result["rows"] if r["scenario"] == "stream"]
    if streams:
        lines += ["", "| stream, conns | time to first event p50 ms: direct / pass-through / edgerules "
                      "| events/s: pass-through / edgerules |", "|---|---:|---:|"]
        for r in streams:
            lines.append(f"| {r['connections']} | {r['ttft_p50_ms_direct']:.2f} / {r['ttft_p50_ms_passthrough']:.2f}"
                         f" / {r['ttft_p50_ms']:.2f} | {r['events_per_s_passthrough']:,.0f} / "
                         f"{r['events_per_s']:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(prog="python -m edgerules.drills.gatewaybench")
    p.add_argument("rules", nargs="?", default="rules/")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--scenarios", default=None, help="all, or some of " + ",".join(SCENARIOS))
    p.add_argument("--connections", default="1,16,64")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.scenarios:
        res = run_scenarios(scenario_names(a.scenarios), a.seconds,
                            tuple(int(n) for n in a.connections.split(",")), rounds=a.rounds)
        print(json.dumps(res, indent=2) if a.json else render_scenarios(res))
    else:
        res = run(a.rules, a.seconds)
        print(json.dumps(res, indent=2) if a.json else render(res))


def block_error(path: str, begin: str, end: str) -> str | None:
    """Why replace_block() could not write to `path` (checked before a long measurement), or None."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    start, stop = text.find(begin), text.find(end)
    return None if 0 <= start < stop else f"{path} has no {begin} ... {end} block"


def replace_block(path: str, begin: str, end: str, command: str, table: str) -> None:
    """Replace the lines between `begin` and `end` in the file at `path` with the command and the
    table; ValueError when the file has no such block (nothing is written then)."""
    text = Path(path).read_text(encoding="utf-8")
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"{path} has no {begin} ... {end} block")
    block = f"{begin}\n`{command}`:\n\n{table}\n"
    Path(path).write_text(text[:start] + block + text[stop:], encoding="utf-8")


def write_readme(path: str, table: str, command: str) -> None:
    """README's scenario tables (between README_BEGIN and README_END), with their command."""
    replace_block(path, README_BEGIN, README_END, command, table)
