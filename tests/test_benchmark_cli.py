"""`edgerules bench` as a user runs it: a subprocess, its exit code, its JSON and its errors."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edgerules.drills.benchmark import BenchError, Rate, measure, read_requests
from edgerules.lang.policy import load_policy
from edgerules.drills.synth import policy_requests, synthetic_policy, synthetic_requests
from procs import EDGERULES

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EDGERULES, "bench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_bench_prints_json_with_positive_rates():
    proc = bench("rules/", "--seconds", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["rules"] > 0 and report["request_source"] == "generated"
    for engine in ("compiled", "interpreter"):
        result = report["results"][engine]
        assert result["decisions"] > 0
        assert result["decisions_per_second"] > 0
        assert result["us_per_decision"] > 0
    assert report["ratio"] > 0
    assert "compiled" in proc.stderr  # progress


def test_bench_prints_a_table():
    proc = bench("rules/", "--seconds", "0.1")
    assert proc.returncode == 0, proc.stderr
    assert "decisions/s" in proc.stdout and "compiled / interpreter" in proc.stdout


def test_bench_takes_requests_from_a_file(tmp_path):
    file = tmp_path / "requests.json"
    file.write_text(json.dumps([
        {"model": "smart", "messages": [{"role": "user", "content": "hi"}]},
        {"body": {"model": "gpt-4o"}, "headers": {"X-Plan": "free"}, "key": "k"},
    ]))
    proc = bench("rules/", "--request", str(file), "--seconds", "0.1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["requests"] == 2 and report["request_source"] == str(file)
    assert report["results"]["compiled"]["decisions_per_second"] > 0


def test_bench_takes_one_request_object(tmp_path):
    file = tmp_path / "one.json"
    file.write_text(json.dumps({"model": "smart"}))
    proc = bench("rules/", "--request", str(file), "--seconds", "0.1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["requests"] == 1


def test_bench_on_a_bad_path_exits_1_with_the_error():
    proc = bench("no/such/rules", "--seconds", "0.1")
    assert proc.returncode == 1
    assert "error[no-rules]" in proc.stderr and "no/such/rules" in proc.stderr
    assert proc.stdout == ""


def test_bench_on_a_policy_with_errors_exits_1(tmp_path):
    bad = tmp_path / "bad.rules"
    bad.write_text('rule r {\n    when modle == "x"\n    deny 403\n}\n')
    proc = bench(str(bad), "--seconds", "0.1")
    assert proc.returncode == 1
    assert "error[unknown-field]" in proc.stderr and "bad.rules:2:10" in proc.stderr


@pytest.mark.parametrize("content, message", [
    ("{nope", "not valid JSON"),
    ("[]", "empty list"),
    ("[1]", "must be a JSON object"),
    ('{"model": 3}', "'model' must be a string"),
])
def test_bench_rejects_a_bad_request_file(tmp_path, content, message):
    file = tmp_path / "r.json"
    file.write_text(content)
    proc = bench("rules/", "--request", str(file), "--seconds", "0.1")
    assert proc.returncode == 2
    assert message in proc.stderr


def test_gateway_bench_measures_all_three_targets_in_one_run():
    from edgerules.drills import gatewaybench

    result = gatewaybench.run("rules/", seconds=1, connections=(2,), modes=("json",), progress=lambda m: None)
    figures = {f["target"]: f for f in result["figures"]}
    assert set(figures) == {"direct", "passthrough", "edgerules"}
    assert all(f["rps"] > 0 and f["errors"] == 0 for f in figures.values())
    (ratio,) = result["ratios"]
    assert ratio["edgerules_vs_passthrough"] > 0
    assert "| json | 2 | edgerules |" in gatewaybench.render(result)


# ---- the pieces, in process ----------------------------------------------------------------

def test_read_requests_reports_a_missing_file(tmp_path):
    with pytest.raises(BenchError, match="cannot read"):
        read_requests(str(tmp_path / "missing.json"))


def test_measure_counts_decisions():
    calls = [(1,), (2,)]
    rate = measure(lambda x: x, calls, 0.01)
    assert isinstance(rate, Rate) and rate.decisions > 0 and rate.per_second > 0


def test_synthetic_policy_has_the_rules_asked_for(tmp_path):
    file = tmp_path / "p.rules"
    file.write_text(synthetic_policy(50))
    policy = load_policy(file)
    assert len(policy.rules) == 50 and not policy.warnings
    matched = {policy.decide(b, h, k).rule for b, h, k in synthetic_requests(300, n_rules=50)}
    assert len(matched) > 10  # the requests spread over the rules


def test_policy_requests_are_valid_and_reach_several_rules():
    policy = load_policy(RULES)
    requests = policy_requests(policy, 200)
    decided = {policy.decide(b, h, k).rule for b, h, k in requests}
    assert len(decided) >= 5


# ---- a traffic sample (--requests) and a hand-written function (--handwritten) -----------------

def _ten_rule_sample(tmp_path, count=20):
    from edgerules.drills.synth import ten_rule_policy

    policy = tmp_path / "ten.rules"
    policy.write_text(ten_rule_policy())
    sample = tmp_path / "traffic.jsonl"
    sample.write_text("".join(
        json.dumps({"body": b, "headers": h, "key": k, "ip": "10.0.0.1", "path": "/v1/chat/completions",
                    "time": "2026-01-06T15:00:00Z"}) + "\n"
        for b, h, k in synthetic_requests(count, n_rules=10)))
    return policy, sample


def test_bench_takes_a_traffic_sample_and_a_handwritten_function(tmp_path):
    policy, sample = _ten_rule_sample(tmp_path)
    proc = bench(str(policy), "--requests", str(sample), "--handwritten", "bench/handwritten.py:decide",
                 "--seconds", "0.1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr          # the hand-written function decides alike
    report = json.loads(proc.stdout)
    assert report["requests"] == 20 and report["request_source"] == str(sample)
    assert set(report["results"]) == {"compiled", "handwritten", "interpreter"}
    assert all(r["decisions_per_second"] > 0 for r in report["results"].values())
    assert report["ratio_handwritten"] > 0 and report["handwritten"] == "bench/handwritten.py:decide"


def test_bench_table_names_the_handwritten_ratio(tmp_path):
    policy, sample = _ten_rule_sample(tmp_path, 5)
    proc = bench(str(policy), "--requests", str(sample), "--handwritten", "bench/handwritten.py:decide",
                 "--seconds", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert "compiled / hand-written (bench/handwritten.py:decide)" in proc.stdout


def test_bench_warns_when_the_handwritten_function_decides_otherwise(tmp_path):
    policy, sample = _ten_rule_sample(tmp_path, 5)
    mine = tmp_path / "mine.py"
    mine.write_text("from edgerules.lang.decision import Decision\n"
                    "def decide(body, headers, key, path, method, ip, now):\n    return Decision()\n")
    proc = bench(str(policy), "--requests", str(sample), "--handwritten", f"{mine}:decide", "--seconds", "0.05")
    assert proc.returncode == 0, proc.stderr
    assert "hand-written function decides request 0 unlike the policy" in proc.stderr


@pytest.mark.parametrize("spec, message", [
    ("nocolon", "takes MODULE:FUNC"),
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
    ("bench/handwritten.py:nope", "has no function 'nope'"),
    ("bench/missing.py:f", "no such file bench/missing.py"),
])
def test_bench_rejects_a_bad_handwritten_spec(spec, message):
    proc = bench("rules/", "--handwritten", spec, "--seconds", "0.05")
    assert proc.returncode == 2
    assert message in proc.stderr


def test_bench_names_the_bad_line_of_a_traffic_sample(tmp_path):
    sample = tmp_path / "traffic.jsonl"
    sample.write_text(json.dumps({"body": {"model": "smart"}}) + "\n" + '{"body": 3}\n')
    proc = bench("rules/", "--requests", str(sample), "--seconds", "0.05")
    assert proc.returncode == 2
    assert f"{sample}:2: not a request" in proc.stderr


def test_bench_refuses_request_and_requests_together(tmp_path):
    proc = bench("rules/", "--request", "a.json", "--requests", "b.jsonl")
    assert proc.returncode == 2 and "not allowed with" in proc.stderr


# ---- whole-request scenarios (--gateway --scenarios) ------------------------------------------

def test_bench_scenarios_measure_a_cache_hit_against_direct_and_the_passthrough(tmp_path):
    from edgerules.drills.gatewaybench import README_BEGIN, README_END

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold figures\n{README_END}\nafter\n")
    proc = subprocess.run([EDGERULES, "bench", "rules/", "--gateway", "--scenarios", "cache",
                           "--connections", "1", "--seconds", "1", "--json", "--write-readme", str(readme)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert text.startswith(f"intro\n{README_BEGIN}\n`edgerules bench rules/ --gateway --scenarios cache "
                           f"--connections 1 --seconds 1 --write-readme {readme}`:\n\n| scenario |")
    assert "\n| cache | 1 | " in text and "old figures" not in text and text.endswith(f"{README_END}\nafter\n")
    (row,) = json.loads(proc.stdout)["rows"]
    assert row["scenario"] == "cache" and row["connections"] == 1 and row["errors"] == 0
    assert set(row["figures"]) == {"direct", "passthrough", "edgerules"}
    assert row["rps"] > 0 and row["x_passthrough"] > 0
    for key in ("added_p50_ms_vs_direct", "added_p99_ms_vs_passthrough"):
        assert isinstance(row[key], float)


@pytest.mark.parametrize("args, message", [
    (["--gateway", "--scenarios", "routing,nope"], "unknown scenario 'nope'"),
    (["--scenarios", "all"], "--scenarios goes with --gateway"),
    (["--gateway", "--scenarios", "all", "--connections", "0"], "--connections takes counts"),
    (["--write-readme", "README.md"], "--write-readme goes with --gateway --scenarios"),
    (["--gateway", "--scenarios", "all", "--write-readme", "pyproject.toml"],
     "--write-readme: pyproject.toml has no <!-- scenarios:begin"),
    (["--gateway", "--scenarios", "all", "--write-readme", "missing.md"], "--write-readme: cannot read missing.md"),
])
def test_bench_scenarios_reject_bad_arguments(args, message):
    proc = bench("rules/", *args, "--seconds", "0.05")
    assert proc.returncode == 2
    assert message in proc.stderr
