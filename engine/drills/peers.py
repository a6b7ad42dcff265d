"""Peers in the same run: LiteLLM's proxy and Portkey's gateway beside edgerules, direct and the pass-through.

`edgerules bench --peers litellm,portkey` (or `python -m edgerules.drills.peers`) installs each
peer into a throwaway folder under ~/.cache/edgerules-peers/ (`EDGERULES_PEERS_CACHE` moves it):
LiteLLM's proxy with `pip install 'litellm[proxy]'` into a venv of its own, Portkey's gateway with
`npm install @portkey-ai/gateway` (run with node). Neither is a dependency of edgerules.

Every server runs on 127.0.0.1 in a process started and stopped here by PID, and every one of
them forwards to the same fake upstream (`edgerules upstream`):
  direct       the upstream itself
  passthrough  the bare Starlette + aiohttp pass-through (edgerules.drills.passthrough)
  edgerules    `edgerules serve` on POLICY below: two guards, a `limit requests ... by key` every
               request meets, an alias `chat` with retries and a fallback to a second provider
  litellm      `litellm --config` with the alias `chat` (openai/..., api_base the upstream), 2
               retries, a fallback to a second deployment, the master key = edgerules' key;
               telemetry off, no database, the local model cost map (no outbound call)
  portkey      the gateway with an `x-portkey-config`: fallback over two `custom_host` targets,
               retry 2 attempts
Identical traffic: wrk (or, without wrk, a bounded aiohttp loop) sends the same body and the
same headers (the key, Portkey's config header) to every target; each ignores what is not its
own. Peers run neither guards nor a rate limit (they would need a database or plugins for
those), which favours them. Installing, starting, stopping and loading: edgerules.drills.peer_setup.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from . import gatewaybench as gb
from .peer_setup import (PeerUnavailable, cache_dir, install_litellm, install_portkey, load, load_average,
                         peer_version, settle, start_server, stop_server, warm)

PEERS = ("litellm", "portkey")
TARGETS = ("direct", "passthrough", "edgerules") + PEERS
CONNECTIONS = (1, 32)
KEY = "sk-edgerules-peers-bench"          # a benchmark key, not a secret: all on 127.0.0.1
MODEL = "chat"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "benchmark this request"}]})
README_BEGIN = "<!-- peers:begin (python3 -m edgerules.drills.peers --write-readme README.md) -->"
README_END = "<!-- peers:end -->"

POLICY = """\
provider primary {{ url "{upstream}" }}
provider backup  {{ url "{upstream}" }}

key bench {{ secret env("EDGERULES_PEERS_KEY") }}

rule guard_huge_prompt {{
    when input_tokens > 32_000
    deny 413 "prompt is larger than 32k tokens"
}}

rule guard_batch_stream {{
    when header("x-client") == "batch" and stream
    deny 400 "batch clients do not stream"
}}

rule tier {{
    limit requests 1_000_000_000 per 1m by key
}}

rule chat_alias {{
    when model == "{model}"
    retry 2 backoff constant 50ms on 429, 5xx, connect
    route fallback [primary/bench, backup/bench]
}}
"""


@dataclass
class Figure:
    target: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int | None = None
    cpu_us: float | None = None


# ---- configuration of each server -------------------------------------------------------------

def policy_text(upstream_url: str) -> str:
    return POLICY.format(upstream=upstream_url, model=MODEL)


def litellm_config(upstream_url: str) -> dict:
    """LiteLLM's config.yaml (written as JSON, which YAML reads): the same alias, retries, fallback."""
    params = {"model": "openai/bench", "api_base": upstream_url, "api_key": "sk-upstream"}
    return {
        "model_list": [{"model_name": MODEL, "litellm_params": params},
                       {"model_name": f"{MODEL}-backup", "litellm_params": dict(params)}],
        "router_settings": {"num_retries": 2, "fallbacks": [{MODEL: [f"{MODEL}-backup"]}]},
        "litellm_settings": {"telemetry": False, "num_retries": 2, "drop_params": True},
        "general_settings": {"master_key": KEY, "disable_spend_logs": True},
    }


def portkey_config(upstream_url: str) -> dict:
    """Portkey's `x-portkey-config`: fallback over two custom hosts, 2 retry attempts."""
    target = {"provider": "openai", "api_key": "sk-upstream", "custom_host": upstream_url}
    return {"strategy": {"mode": "fallback"}, "retry": {"attempts": 2},
            "targets": [dict(target), dict(target)]}


def request_headers(upstream_url: str) -> dict[str, str]:
    """The headers every target gets, so the traffic is byte for byte the same."""
    return {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}",
            "x-portkey-config": json.dumps(portkey_config(upstream_url), separators=(",", ":"))}


def litellm_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LITELLM_MASTER_KEY")}
    env.update(LITELLM_TELEMETRY="False", LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR",
               DISABLE_ADMIN_UI="True", NO_DOCS="True", NO_PROXY="127.0.0.1,localhost")
    return env


def portkey_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_CONNECTION_STRING", "HTTP_PROXY", "HTTPS_PROXY")}
    env.update(NODE_ENV="production")   # production: no log UI, no dev routes
    return env


def start_servers(names, cache: Path, say=print) -> tuple[dict, list]:
    """Every target's (url, pid), and the processes to stop. Peers that cannot run are left out
    (with the reason said); the upstream, the pass-through and edgerules must start."""
    py = sys.executable
    ports = {name: gb._free_port() for name in ("direct",) + tuple(names)}
    upstream_url = f"http://127.0.0.1:{ports['direct']}/v1"
    procs, targets, skipped = [], {}, {}
    policy_dir = Path(tempfile.mkdtemp(prefix="edgerules-peers-"))
    (policy_dir / "bench.rules").write_text(policy_text(upstream_url))
    try:
        up = start_server([py, "-m", "edgerules.drills.upstream", "--port", str(ports["direct"])],
                    f"http://127.0.0.1:{ports['direct']}/healthz")
        procs.append(up)
        targets["direct"] = up
        for name in names:
            port = ports[name]
            try:
                targets[name] = _start_one(name, port, upstream_url, policy_dir, cache, say)
            except PeerUnavailable as exc:
                if name not in PEERS:
                    raise
                skipped[name] = str(exc)
                say(f"  {name}: skipped: {exc}")
                continue
            procs.append(targets[name])
    except BaseException:
        for proc in reversed(procs):
            stop_server(proc)
        shutil.rmtree(policy_dir, ignore_errors=True)
        raise
    urls = {name: (f"http://127.0.0.1:{ports[name]}/v1/chat/completions", proc.pid)
            for name, proc in targets.items()}
    return {"urls": urls, "upstream": upstream_url, "skipped": skipped, "policy_dir": policy_dir}, procs


def _start_one(name: str, port: int, upstream_url: str, policy_dir: Path, cache: Path, say) -> subprocess.Popen:
    py = sys.executable
    health = f"http://127.0.0.1:{port}"
    if name == "passthrough":
        return start_server([py, "-m", "edgerules.drills.passthrough", "--upstream", upstream_url, "--port", str(port)],
                      health + "/healthz")
    if name == "edgerules":
        env = dict(os.environ, EDGERULES_PEERS_KEY=KEY)
        return start_server([py, "-m", "edgerules", "serve", "--rules", str(policy_dir), "--port", str(port),
                       "--no-watch", "--log-level", "warning"], health + "/healthz", env=env)
    if name == "litellm":
        exe = install_litellm(cache, say=say)
        config = policy_dir / "litellm.yaml"
        config.write_text(json.dumps(litellm_config(upstream_url), indent=2))
        return start_server([str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                       "--num_workers", "1"], health + "/health/liveliness", env=litellm_env(), timeout=180,
                      cwd=policy_dir)
    if name == "portkey":
        entry = install_portkey(cache, say=say)
        return start_server(["node", str(entry), f"--port={port}", "--headless"], health + "/", env=portkey_env(),
                      timeout=60, cwd=policy_dir)
    raise ValueError(f"unknown target {name!r}")


# ---- the run ----------------------------------------------------------------------------------

def run(peers=PEERS, seconds: float = 3.0, connections=CONNECTIONS, max_requests: int | None = None,
        cache: Path | None = None, progress=None, rounds: int = 1) -> dict:
    """Every target at every connection count, back to back in one run; see the module docstring.
    With rounds > 1 the targets take turns that many times and each keeps its best round (the
    highest req/s, with that round's latencies): a neighbour's burst then costs one round, not the row."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    cache = cache or cache_dir()
    names = ("passthrough", "edgerules") + tuple(peers)
    say("starting the upstream, the pass-through, edgerules" + "".join(f", {p}" for p in peers) + " ...")
    servers, procs = start_servers(names, cache, say)
    best: dict[tuple, Figure] = {}
    load_before = load_average()
    try:
        headers = request_headers(servers["upstream"])
        answers = {target: warm(url, BODY, headers) for target, (url, _) in servers["urls"].items()}
        for conns in connections:
            for round_ in range(max(1, rounds)):
                for target, (url, pid) in servers["urls"].items():
                    say(f"  {conns:>3} connections  {target:11} round {round_ + 1} ...")
                    # A bounded run checks the legs and needs no warm-up; otherwise warm at this
                    # concurrency long enough for node's JIT (Portkey doubles its throughput over
                    # its first few thousand requests).
                    f = measure(target, url, pid, headers, conns, seconds, max_requests,
                                warmup=max_requests is None and round_ == 0)
                    if (target, conns) not in best or f.rps > best[(target, conns)].rps:
                        best[(target, conns)] = f
    finally:
        for proc in reversed(procs):
            stop_server(proc)
        shutil.rmtree(servers["policy_dir"], ignore_errors=True)
    figures = [asdict(f) for f in best.values()]
    return {"loadgen": "wrk" if shutil.which("wrk") else "aiohttp loop", "seconds": seconds, "rounds": rounds,
            "connections": list(connections), "skipped": servers["skipped"], "answers": answers,
            "load_average": [load_before, load_average()],
            "versions": {p: peer_version(p, cache) for p in peers if p not in servers["skipped"]},
            "figures": figures, "rows": rows(figures)}


def measure(target: str, url: str, pid: int, headers: dict, conns: int, seconds: float,
            max_requests: int | None, warmup: bool) -> Figure:
    if warmup:
        load(url, BODY, headers, conns, max(1.0, seconds / 2))
        settle(pid)
    cpu0 = gb._cpu_seconds(pid)
    r = load(url, BODY, headers, conns, seconds, max_requests)
    settle(pid)   # its CPU per request includes finishing the requests wrk left behind
    cpu1 = gb._cpu_seconds(pid)
    n = r.get("requests") or r["rps"] * seconds
    cpu = (cpu1 - cpu0) / n * 1e6 if cpu0 is not None and cpu1 is not None and n else None
    return Figure(target, conns, r["rps"], r["p50_ms"], r["p99_ms"], r["errors"], r.get("requests"), cpu)


def rows(figures: list[dict]) -> list[dict]:
    """Per target and connection count: x direct throughput, added p50/p99 over direct."""
    by = {(f["target"], f["connections"]): f for f in figures}
    out = []
    for target in [t for t in TARGETS if any(k[0] == t for k in by)]:
        for conns in sorted({c for t, c in by if t == target}):
            f, d = by[(target, conns)], by.get(("direct", conns))
            out.append({"target": target, "connections": conns, "rps": f["rps"], "errors": f["errors"],
                        "cpu_us": f.get("cpu_us"),
                        "x_direct": f["rps"] / d["rps"] if d and d["rps"] else None,
                        "added_p50_ms": f["p50_ms"] - d["p50_ms"] if d else None,
                        "added_p99_ms": f["p99_ms"] - d["p99_ms"] if d else None})
    return out


LABELS = {"direct": "direct (`edgerules upstream`)", "passthrough": "bare Starlette + aiohttp pass-through",
          "edgerules": "edgerules serve, guards + limit by key + alias with retries and fallback",
          "litellm": "LiteLLM proxy {v} (1 worker)", "portkey": "Portkey gateway {v} (node)"}


def render(result: dict) -> str:
    """One markdown row per target: x direct, added p50/p99 and req/s at each connection count."""
    conns = result["connections"]
    head = ["target"]
    for c in conns:
        head += [f"x direct @{c}", f"added p50 @{c} (ms)", f"added p99 @{c} (ms)", f"req/s @{c}"]
    head += ["CPU µs/req @" + str(conns[-1]), "errors"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    by = {(r["target"], r["connections"]): r for r in result["rows"]}
    for target in [t for t in TARGETS if any(k[0] == t for k in by)]:
        label = LABELS[target].format(v=result.get("versions", {}).get(target, ""))
        cells, errors = [label], 0
        for c in conns:
            r = by.get((target, c))
            if r is None:
                cells += ["-"] * 4
                continue
            errors += r["errors"]
            direct = target == "direct"
            cells += ["1.00x" if direct else _ratio(r["x_direct"]),
                      "-" if direct else _num(r["added_p50_ms"], "{:+.2f}"),
                      "-" if direct else _num(r["added_p99_ms"], "{:+.2f}"),
                      f"{r['rps']:,.0f}" if r["rps"] >= 100 else f"{r['rps']:.1f}"]
        last = by.get((target, conns[-1]))
        cells += [_num(last and last.get("cpu_us"), "{:.0f}"), str(errors)]
        lines.append("| " + " | ".join(cells) + " |")
    before, after = result.get("load_average") or (None, None)
    if before is not None and after is not None:
        rounds = result.get("rounds", 1)
        lines.append(f"\n{result.get('loadgen', 'wrk')}, {result.get('seconds', 0):g} s a measurement"
                     + (f", best of {rounds} interleaved rounds" if rounds > 1 else "") + "; "
                     f"1-minute load average {before:.1f} at the start, {after:.1f} at the end (2 cores).")
    for name, why in result.get("skipped", {}).items():
        lines.append(f"\n{name} skipped: {why.splitlines()[0] if why else ''}")
    return "\n".join(lines)


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.3f}x" if value >= 0.01 else f"{value:.4f}x"


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def write_readme(path: str, table: str, command: str) -> None:
    """Replace the block between README_BEGIN and README_END with the command and the table."""
    gb.replace_block(path, README_BEGIN, README_END, command, table)


def peer_names(text: str) -> tuple[str, ...]:
    """'all', or a comma-separated list of PEERS; ValueError naming the unknown one."""
    if text.strip() in ("all", ""):
        return PEERS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if name not in PEERS:
            raise ValueError(f"unknown peer {name!r}: choose from all, {', '.join(PEERS)}")
    return names


def run_from_bench(args) -> int:
    """`edgerules bench --peers LIST [--seconds S] [--connections N,N] [--json]`."""
    try:
        names = peer_names(args.peers)
        conns = (CONNECTIONS if args.connections == "1,16,64"   # the scenarios' default: not ours
                 else tuple(int(c) for c in args.connections.split(",")))
    except ValueError as exc:
        print(f"edgerules bench: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "write_readme", None):
        why = gb.block_error(args.write_readme, README_BEGIN, README_END)
        if why is not None:
            print(f"edgerules bench: --write-readme: {why}", file=sys.stderr)
            return 2
    result = run(names, max(args.seconds, 1.0), conns)
    table = render(result)
    print(json.dumps(result, indent=2) if args.json else table)
    if getattr(args, "write_readme", None):
        command = (f"edgerules bench --peers {args.peers} --seconds {max(args.seconds, 1.0):g} "
                   f"--connections {','.join(map(str, conns))} --write-readme {args.write_readme}")
        try:
            write_readme(args.write_readme, table, command)
        except (ValueError, OSError) as exc:
            print(f"edgerules bench: {exc}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m edgerules.drills.peers", description=__doc__.splitlines()[0])
    p.add_argument("--peers", default="all", help="all (default), or some of " + ",".join(PEERS))
    p.add_argument("--seconds", type=float, default=3.0, help="each measurement, whole seconds (default 3)")
    p.add_argument("--connections", default="1,32", help="connection counts (default 1,32)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; each target keeps its best (default 1)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--write-readme", metavar="FILE", help="also rewrite FILE's peers table (README.md)")
    a = p.parse_args(argv)
    try:
        names = peer_names(a.peers)
        conns = tuple(int(c) for c in a.connections.split(","))
    except ValueError as exc:
        p.error(str(exc))
    result = run(names, a.seconds, conns, rounds=max(1, a.rounds))
    table = render(result)
    print(json.dumps(result, indent=2) if a.json else table)
    if a.write_readme:
        command = "python3 -m edgerules.drills.peers" + ("" if a.peers == "all" else f" --peers {a.peers}") + \
                  f" --seconds {a.seconds:g} --connections {a.connections}" + \
                  (f" --rounds {a.rounds}" if a.rounds > 1 else "") + f" --write-readme {a.write_readme}"
        write_readme(a.write_readme, table, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
