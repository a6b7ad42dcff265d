"""`edgerules serve --workers 2`: both workers answer, and one SIGHUP or one POST /admin/reload
makes both serve the new policy, in the same processes (their state kept)."""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gw import start_gateway

POLICY = 'provider demo {{ format echo }}\nrule {name} {{ route demo/echo }}\n'
DEADLINE = 60.0
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def one_request(url: str) -> tuple[int, str]:
    # A new connection each time, so that the kernel hands it to either worker.
    resp = httpx.post(url + "/v1/chat/completions", json=BODY, trust_env=False, timeout=30,
                      headers={"connection": "close"})
    assert resp.status_code == 200, resp.text
    return int(resp.headers["x-edgerules-worker"]), resp.headers["x-edgerules-policy"]


def answers_until_each_worker(url: str, workers: int, version: str | None = None) -> dict[int, set[str]]:
    """Versions each worker served, sending until `workers` distinct workers answered (with `version`)."""
    seen: dict[int, set[str]] = {}
    deadline = time.monotonic() + DEADLINE
    with ThreadPoolExecutor(8) as pool:
        for _ in range(100):    # at most 800 requests
            for pid, served in pool.map(lambda _: one_request(url), range(8)):
                seen.setdefault(pid, set()).add(served)
            done = [pid for pid, versions in seen.items() if version is None or version in versions]
            if len(done) >= workers or time.monotonic() > deadline:
                return seen
    return seen


@pytest.fixture
def gateway(tmp_path):
    gw = start_gateway(POLICY.format(name="first"), tmp_path, "--workers", "2", "--no-watch", timeout=60)
    yield gw
    gw.stop()


def version_of(gw) -> str:
    return gw.http.get("/healthz").json()["policy"]


def test_both_workers_answer_and_one_sighup_reloads_both_in_place(gateway):
    first = version_of(gateway)
    seen = answers_until_each_worker(gateway.url, 2)
    assert len(seen) == 2, f"only workers {sorted(seen)} answered"
    assert all(versions == {first} for versions in seen.values())
    workers = set(seen)

    (gateway.rules / "policy.rules").write_text(POLICY.format(name="second"))
    os.kill(gateway.pid, signal.SIGHUP)     # to the supervisor, the process `edgerules serve` runs in
    # Versions are hashes: wait until both workers serve something other than the first one.
    deadline = time.monotonic() + DEADLINE
    while True:
        after = answers_until_each_worker(gateway.url, 2)
        if len(after) == 2 and all(versions - {first} for versions in after.values()):
            break
        assert time.monotonic() < deadline, f"both workers did not reload after one SIGHUP: {after}"
    second = version_of(gateway)
    assert second != first
    final = answers_until_each_worker(gateway.url, 2)
    assert set(final) == workers, "the workers were replaced instead of reloaded"
    assert all(versions == {second} for versions in final.values())
    assert "restarting processes" not in gateway.output()


def test_one_post_admin_reload_reloads_every_worker_and_says_what_each_did(gateway):
    first = version_of(gateway)
    workers = set(answers_until_each_worker(gateway.url, 2))
    assert len(workers) == 2

    (gateway.rules / "policy.rules").write_text(POLICY.format(name="third"))
    resp = gateway.http.post("/admin/reload")
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["ok"] is True and result["version"] != first
    assert {w["pid"] for w in result["workers"]} == workers
    assert all(w["ok"] and w["changed"] and w["version"] == result["version"] for w in result["workers"])
    # Every worker reported before the answer: from now on every answer is the new version.
    seen = answers_until_each_worker(gateway.url, 2)
    assert set(seen) == workers
    assert all(versions == {result["version"]} for versions in seen.values())

    (gateway.rules / "policy.rules").write_text("rule broken { route }\n")
    failed = gateway.http.post("/admin/reload")
    assert failed.status_code == 422
    assert [w["ok"] for w in failed.json()["workers"]] == [False, False]
    assert all(versions == {result["version"]} for versions in answers_until_each_worker(gateway.url, 2).values())


def test_a_forced_reload_reaches_every_worker(gateway):
    workers = set(answers_until_each_worker(gateway.url, 2))
    (gateway.rules / "policy.rules").write_text("provider demo { format echo }\n")   # every rule removed
    refused = gateway.http.post("/admin/reload")
    assert refused.status_code == 422 and {w["pid"] for w in refused.json()["workers"]} == workers
    forced = gateway.http.post("/admin/reload?force=1")
    assert forced.status_code == 200, forced.text
    assert [w["ok"] for w in forced.json()["workers"]] == [True, True]
    assert gateway.http.post("/v1/chat/completions", json=BODY).status_code == 404   # no rule routes 'm'
