"""The peers harness (edgerules.drills.peers, peer_setup): its own parts always, the peers only on request.

Always (a few seconds): the policy, LiteLLM's and Portkey's configurations, the wrk script and its
parsing, the table, README's block, and one short run of the direct, pass-through and edgerules
legs with a bounded request count. The full run installs LiteLLM's proxy and Portkey's gateway
under ~/.cache/edgerules-peers (pip and npm; minutes the first time) and runs only with
EDGERULES_PEERS=1; CI does not set it. README's peers table comes from
`python3 -m edgerules.drills.peers --write-readme README.md`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from edgerules.drills import peer_setup, peers
from edgerules.lang.source import Source
from edgerules.lang.policy import build_policy

UPSTREAM = "http://127.0.0.1:9/v1"

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:1/v1/chat/completions
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   9.00ms   90.00%
  Latency Distribution
     50%    1.10ms
     75%    1.30ms
     90%    1.50ms
     99%    2.50ms
  12345 requests in 1.00s, 3.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  12345.00
Transfer/sec:      3.00MB
"""


def test_the_policy_has_the_issues_shape():
    policy = build_policy([Source("bench.rules", peers.policy_text(UPSTREAM))], env={"EDGERULES_PEERS_KEY": peers.KEY})
    assert not policy.warnings
    body = json.loads(peers.BODY)
    decision = policy.decide(body, {}, "bench").to_dict()
    assert decision["matched"] == ["tier", "chat_alias"]
    assert decision["route"] == {"fallback": ["primary/bench", "backup/bench"]}
    assert decision["retry"]["attempts"] == 2
    assert [(lim["kind"], lim["by"], lim["values"]) for lim in decision["limits"]] == [("requests", ["key"], ["bench"])]
    huge = dict(body, messages=[{"role": "user", "content": "word " * 200_000}])
    assert policy.decide(huge, {}, "bench").to_dict()["deny"]["status"] == 413
    batch = policy.decide(dict(body, stream=True), {"x-client": "batch"}, "bench").to_dict()
    assert batch["deny"]["status"] == 400


def test_litellm_config_forwards_the_alias_to_the_upstream_with_retries_and_a_fallback():
    config = peers.litellm_config(UPSTREAM)
    names = [m["model_name"] for m in config["model_list"]]
    assert names == [peers.MODEL, f"{peers.MODEL}-backup"]
    assert all(m["litellm_params"]["api_base"] == UPSTREAM and m["litellm_params"]["model"].startswith("openai/")
               for m in config["model_list"])
    assert config["router_settings"] == {"num_retries": 2, "fallbacks": [{peers.MODEL: [f"{peers.MODEL}-backup"]}]}
    assert config["general_settings"]["master_key"] == peers.KEY
    assert config["litellm_settings"]["telemetry"] is False
    env = peers.litellm_env()
    assert env["LITELLM_TELEMETRY"] == "False" and env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert "DATABASE_URL" not in env


def test_every_target_gets_the_same_headers_with_portkeys_config():
    headers = peers.request_headers(UPSTREAM)
    assert headers["Authorization"] == f"Bearer {peers.KEY}"
    config = json.loads(headers["x-portkey-config"])
    assert config["strategy"] == {"mode": "fallback"} and config["retry"] == {"attempts": 2}
    assert [t["custom_host"] for t in config["targets"]] == [UPSTREAM, UPSTREAM]
    assert "REDIS_CONNECTION_STRING" not in peers.portkey_env()


def test_wrk_script_sends_the_headers_and_stops_after_its_share():
    script = peer_setup.wrk_script(peers.BODY, {"Authorization": "Bearer x", "x-portkey-config": '{"a":[1]}'},
                              max_requests=101, threads=2)
    assert 'wrk.method = "POST"' in script and f"[==[{peers.BODY}]==]" in script
    assert "wrk.headers[ [==[x-portkey-config]==] ] = [==[{\"a\":[1]}]==]" in script
    assert "count >= 51" in script and "wrk.thread:stop()" in script
    assert "response" not in peer_setup.wrk_script(peers.BODY, {})
    with pytest.raises(ValueError):
        peer_setup.wrk_script("]==]", {})


def test_parse_wrk_counts_errors_and_reads_percentiles():
    r = peer_setup.parse_wrk(WRK_OUTPUT)
    assert r == {"rps": 12345.0, "p50_ms": 1.1, "p99_ms": 2.5, "errors": 7, "requests": 12345}
    with pytest.raises(RuntimeError):
        peer_setup.parse_wrk("unable to connect")


def _figure(target, conns, rps, p50, p99):
    return {"target": target, "connections": conns, "rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": 0,
            "requests": int(rps), "cpu_us": 100.0}


def test_render_gives_one_row_a_target_in_order_with_ratios_to_direct():
    figures = [_figure(t, c, rps, p50, p99) for c in (1, 32) for t, rps, p50, p99 in (
        ("litellm", 20, 50.0, 90.0), ("direct", 10_000, 0.1, 0.3), ("edgerules", 2_500, 0.6, 1.3),
        ("passthrough", 3_000, 0.5, 1.0))]
    result = {"connections": [1, 32], "figures": figures, "rows": peers.rows(figures),
              "versions": {"litellm": "1.2.3"}, "skipped": {"portkey": "node is not installed\nmore"}}
    table = peers.render(result)
    lines = table.splitlines()
    assert lines[0].startswith("| target | x direct @1 | added p50 @1 (ms) | added p99 @1 (ms) | req/s @1 |")
    targets = [line.split(" | ")[0] for line in lines[2:6]]
    assert targets == ["| direct (`edgerules upstream`)", "| bare Starlette + aiohttp pass-through",
                       "| edgerules serve, guards + limit by key + alias with retries and fallback",
                       "| LiteLLM proxy 1.2.3 (1 worker)"]
    assert "| 0.250x | +0.50 | +1.00 | 2,500 |" in lines[4]
    assert "| 0.0020x | +49.90 | +89.70 | 20.0 |" in lines[5]
    assert table.rstrip().endswith("portkey skipped: node is not installed")


def test_write_readme_replaces_only_its_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{peers.README_BEGIN}\nold table\n{peers.README_END}\nafter\n")
    peers.write_readme(str(readme), "| new |", "python3 -m edgerules.drills.peers")
    assert readme.read_text() == (f"before\n{peers.README_BEGIN}\n`python3 -m edgerules.drills.peers`:\n\n"
                                  f"| new |\n{peers.README_END}\nafter\n")
    readme.write_text("no block\n")
    with pytest.raises(ValueError):
        peers.write_readme(str(readme), "| new |", "cmd")


def test_bench_peers_refuses_a_readme_without_its_block_before_installing_anything(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no block here\n")
    edgerules = shutil.which("edgerules") or os.path.join(os.path.dirname(sys.executable), "edgerules")
    proc = subprocess.run([edgerules, "bench", "--peers", "litellm", "--write-readme", str(readme)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "EDGERULES_PEERS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2
    assert f"--write-readme: {readme} has no {peers.README_BEGIN}" in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_peer_names():
    assert peers.peer_names("all") == peers.PEERS
    assert peers.peer_names("portkey") == ("portkey",)
    with pytest.raises(ValueError, match="unknown peer 'vllm'"):
        peers.peer_names("litellm,vllm")


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed (apt-get install wrk; .ci/run does)")
def test_the_direct_passthrough_and_edgerules_legs(tmp_path):
    said = []
    result = peers.run((), seconds=1, connections=(1,), max_requests=40, cache=tmp_path, progress=said.append,
                       rounds=2)
    assert [r["target"] for r in result["rows"]] == ["direct", "passthrough", "edgerules"]   # best of 2 rounds
    assert sum("round 2" in m for m in said) == 3
    assert all(r["errors"] == 0 and r["rps"] > 0 for r in result["rows"])
    assert all(0 < f["requests"] <= 41 for f in result["figures"])   # the count bounds the load
    answer = result["answers"]["edgerules"]
    assert answer["x-edgerules-route"] == "primary/bench"
    assert answer["x-ratelimit-limit-requests"] == "1000000000"
    assert "edgerules serve" in peers.render(result)


@pytest.mark.skipif(os.environ.get("EDGERULES_PEERS") != "1",
                    reason="set EDGERULES_PEERS=1 to install LiteLLM's proxy and Portkey's gateway under "
                           "~/.cache/edgerules-peers and measure them (CI does not)")
def test_the_peers_in_the_same_run():
    result = peers.run(peers.PEERS, seconds=1, connections=(1, 4), progress=lambda m: None)
    assert result["skipped"] == {}
    assert {r["target"] for r in result["rows"]} == set(peers.TARGETS)
    assert all(r["errors"] == 0 and r["rps"] > 0 for r in result["rows"])
    assert result["answers"]["portkey"]["x-portkey-last-used-option-index"] == "config.targets[0]"
    assert result["answers"]["litellm"]["x-litellm-model-group"] == peers.MODEL
    print("\n" + peers.render(result))
