"""`edgerules diff OLD NEW`: a recorded sample and generated requests through two policy versions."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from edgerules import load_policy
from edgerules.authoring.diff import Replay, compare, generated_requests, read_requests
from procs import EDGERULES

ROOT = Path(__file__).resolve().parents[1]


def edgerules(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EDGERULES, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def versions(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old, new):
        d.mkdir()
        for f in (ROOT / "rules").glob("*.rules"):
            if not f.name.endswith(".test.rules"):
                shutil.copy(f, d / f.name)
    routing = new / "30-routing.rules"
    routing.write_text(routing.read_text().replace("80% demo/echo, 20% backup/echo", "50% demo/echo, 50% backup/echo"))
    guards = new / "10-guards.rules"
    guards.write_text(guards.read_text().replace('when header("x-client") == "batch" and stream',
                                                 'when header("x-client") == "batch"'))
    return old, new


SAMPLE = [
    {"body": {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}},
    {"body": {"model": "smart", "messages": []}, "headers": {"X-Plan": "free"}, "time": "2026-11-30T09:00:00Z"},
    {"body": {"model": "gpt-4o"}, "headers": {"x-client": "batch"}},
    {"body": {"model": "gpt-4o"}, "headers": {"x-client": "batch"}, "key": "", "ip": "10.0.0.1", "time": 0},
    {"body": {"model": "gpt-4o"}},
    {"body": {"model": 5}},
]


def write_sample(path: Path) -> Path:
    path.write_text("\n".join(json.dumps(item) for item in SAMPLE) + "\n\n")
    return path


def test_a_recorded_sample_counts_each_change_with_an_example(versions, tmp_path):
    old, new = versions
    sample = write_sample(tmp_path / "sample.jsonl")
    out = edgerules("diff", str(old), str(new), "--requests", str(sample))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "6 requests: 1 unchanged, 4 changed, 1 invalid (skipped)"
    assert lines[1] == "2 requests: route fallback [demo/echo, backup/echo] -> deny 400"
    assert json.loads(lines[2].removeprefix("    e.g. "))["headers"] == {"x-client": "batch"}
    assert lines[3] == ("2 requests: route split [80% demo/echo, 20% backup/echo] -> "
                        "route split [50% demo/echo, 50% backup/echo]")
    assert json.loads(lines[4].removeprefix("    e.g. "))["body"] == SAMPLE[0]["body"]
    assert len(lines) == 5
    out = edgerules("diff", str(old), str(new), "--requests", str(sample), "--fail-on-change", "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert [(c["old"], c["new"], c["count"]) for c in report["changes"]] == [
        ("route fallback [demo/echo, backup/echo]", "deny 400", 2),
        ("route split [80% demo/echo, 20% backup/echo]", "route split [50% demo/echo, 50% backup/echo]", 2)]


def test_the_same_policy_changes_nothing_and_passes_fail_on_change():
    out = edgerules("diff", str(ROOT / "rules"), str(ROOT / "rules"), "--fail-on-change", "--count", "300")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["300 requests: 300 unchanged, 0 changed"]


def test_generated_requests_find_the_changes(versions):
    old, new = (load_policy(p) for p in versions)
    report = compare(old, new, generated_requests(old, new, 600))
    found = {(c.old, c.new) for c in report.changes.values()}
    assert ("route split [80% demo/echo, 20% backup/echo]", "route split [50% demo/echo, 50% backup/echo]") in found
    assert any(new == "deny 400" for _, new in found)
    assert report.total == 600


def test_a_bad_line_is_named(tmp_path, versions):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": {"model": "a"}}\n{"body": [1]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a request: 'body' must be a JSON object"):
        read_requests(str(bad))
    out = edgerules("diff", str(versions[0]), str(versions[1]), "--requests", str(bad))
    assert out.returncode == 2
    assert "bad.jsonl:2: not a request" in out.stderr


def test_time_decides_hour_and_weekday(tmp_path):
    (tmp_path / "a.rules").write_text('provider demo { format echo }\nrule r { route demo }\n')
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "b.rules").write_text(
        'provider demo { format echo }\nrule night { when hour >= 22 deny 403 }\nrule r { route demo }\n')
    old, new = load_policy(tmp_path / "a.rules"), load_policy(tmp_path / "b")
    day = Replay({"model": "x"}, {}, now=1796029200.0)           # 2026-11-30T09:00:00Z
    night = Replay({"model": "x"}, {}, now=1796077800.0)         # 22:30
    report = compare(old, new, [day, night])
    assert [(c.old, c.new, c.count) for c in report.changes.values()] == [("route demo", "deny 403", 1)]
