"""Hot reload: file changes, SIGHUP and POST /admin/reload swap the policy live; broken edits never serve."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from edgerules.lang.policy import load_policy, read_sources, version_of
from gw import start_gateway
from procs import wait_until

PROVIDERS = 'provider demo { format echo }\nprovider other { format echo }\n'


def _valid(i: int) -> str:
    return PROVIDERS + f'rule r{i} {{ when model == "m" tag "v{i}" route demo/echo-{i} }}\n'


def _broken(i: int) -> str:
    return PROVIDERS + f'rule b{i} {{ when modle == "m" route demo/x }}\n'


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp~")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait_for_version(gw, version: str, timeout: float = 30.0) -> None:
    wait_until(lambda: gw.http.get("/healthz").json()["policy"] == version, timeout,
               what=f"version {version} going live")


@pytest.fixture
def policy_dir(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "policy.rules").write_text(_valid(0))
    return d


def test_fifty_rewrites_under_load_lose_nothing(policy_dir):
    gw = start_gateway(policy_dir, policy_dir, "--reload-settle", "100ms")
    try:
        failures, served, valid, broken = asyncio.run(_load_and_rewrite(gw, policy_dir, rewrites=50, clients=50))
    except BaseException:
        print(gw.output()[-5000:])   # shown by pytest with the failure
        raise
    finally:
        gw.stop()
    assert failures == []
    assert not (served & broken), "a broken version was served"
    assert set(valid) <= served, f"valid versions never served: {set(valid) - served}"
    log = gw.output()
    for version in valid:
        assert f"policy {version} loaded in" in log
    assert log.count("failed; still serving") >= len(broken)


async def _load_and_rewrite(gw, policy_dir: Path, rewrites: int, clients: int):
    """Clients send requests while the policy is rewritten `rewrites` times, valid and broken in
    turn; each rewrite waits until the gateway has taken it (the new version live, or the error
    reported by /admin/policy), so nothing depends on how fast a reload is on this machine."""
    served: set[str] = set()
    failures: list[str] = []
    valid: list[str] = []
    broken: set[str] = set()
    stop = asyncio.Event()
    give_up_at = time.monotonic() + 240   # with the per-client cap, bounds the load whatever happens
    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}

    async def client(n: int, http: httpx.AsyncClient):
        streaming = n % 2 == 0
        for _ in range(10_000):
            if stop.is_set() or time.monotonic() > give_up_at:
                return
            try:
                if streaming:
                    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                        text = "".join([chunk async for chunk in r.aiter_text()])
                        ok = r.status_code == 200 and text.rstrip().endswith("data: [DONE]")
                else:
                    r = await http.post("/v1/chat/completions", json=body)
                    ok = r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
                if not ok:
                    failures.append(f"{r.status_code}")
                served.add(r.headers["x-edgerules-policy"])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))

    async def taken(http: httpx.AsyncClient, version: str, ok: bool) -> None:
        while time.monotonic() < give_up_at:
            info = (await http.get("/admin/policy")).json()
            if ok and info["version"] == version and version in served:   # live, and answered with
                return
            if not ok and info["last_error"] is not None:                   # refused, and reported
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"rewrite to {version} ({'valid' if ok else 'broken'}) was never taken")

    async def writer(http: httpx.AsyncClient):
        try:
            await asyncio.sleep(0)   # let the clients start
            for i in range(1, rewrites + 1):
                ok = bool(i % 2)
                await asyncio.to_thread(_write_atomic, policy_dir / "policy.rules", _valid(i) if ok else _broken(i))
                version = version_of(read_sources(policy_dir))
                (valid.append if ok else broken.add)(version)
                await taken(http, version, ok)
        finally:
            stop.set()

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    # The writer's polls open a fresh connection each: a pooled one left idle past the server's
    # keep-alive timeout could be closed just as it is reused, which is no fault of a reload.
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=gw.url, timeout=60, limits=limits, trust_env=False) as http, \
            httpx.AsyncClient(base_url=gw.url, timeout=60, limits=fresh, trust_env=False) as admin:
        await asyncio.gather(writer(admin), *(client(n, http) for n in range(clients)))
    return failures, served, valid, broken


def test_editor_rename_delete_and_new_file_are_picked_up(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "a.rules").write_text(PROVIDERS)
    (d / "b.rules").write_text('rule one { when model == "one" route demo/one }\n')
    gw = start_gateway(d, d)
    try:
        # an editor's write-to-temp-and-rename
        _write_atomic(d / "b.rules", 'rule one { when model == "one" route other/one }\n')
        _wait_for_version(gw, load_policy(d).version)
        assert gw.chat("one").headers["x-edgerules-route"] == "other/one"
        # a new file
        (d / "c.rules").write_text('rule two { when model == "two" route demo/two }\n')
        _wait_for_version(gw, load_policy(d).version)
        assert gw.chat("two").status_code == 200
        # a deleted file
        (d / "c.rules").unlink()
        _wait_for_version(gw, load_policy(d).version)
        assert gw.chat("two").status_code == 404
        # a renamed file keeps working under its new name
        (d / "b.rules").rename(d / "z.rules")
        _wait_for_version(gw, load_policy(d).version)
        assert gw.chat("one").headers["x-edgerules-route"] == "other/one"
    finally:
        gw.stop()
    assert "rules added: two" in gw.output() and "rules removed: two" in gw.output()


def test_broken_edit_keeps_the_last_good_policy_and_reports_it(policy_dir):
    gw = start_gateway(policy_dir, policy_dir, "--no-watch")
    try:
        good = gw.http.get("/healthz").json()["policy"]
        (policy_dir / "policy.rules").write_text(_broken(1))
        resp = gw.post("/admin/reload")
        assert resp.status_code == 422 and resp.json()["ok"] is False
        info = gw.http.get("/admin/policy").json()
        assert info["version"] == good
        err = info["last_error"]
        assert err["location"].endswith("policy.rules:3:16")
        assert "unknown field 'modle'" in err["message"]
        assert gw.chat("m").headers["x-edgerules-policy"] == good
        assert "policy.rules:3:16: error[unknown-field]" in gw.output()
        # fixing the file clears the error
        (policy_dir / "policy.rules").write_text(_valid(7))
        assert gw.post("/admin/reload").json()["ok"] is True
        assert gw.http.get("/admin/policy").json()["last_error"] is None
    finally:
        gw.stop()


def test_sighup_reloads(policy_dir):
    gw = start_gateway(policy_dir, policy_dir, "--no-watch")
    try:
        (policy_dir / "policy.rules").write_text(_valid(3))
        os.kill(gw.pid, signal.SIGHUP)
        _wait_for_version(gw, load_policy(policy_dir).version)
        assert gw.chat("m").headers["x-edgerules-route"] == "demo/echo-3"
    finally:
        gw.stop()


def test_every_worker_takes_the_new_policy(policy_dir):
    gw = start_gateway(policy_dir, policy_dir, "--workers", "2", timeout=30)
    try:
        (policy_dir / "policy.rules").write_text(_valid(5))
        new = load_policy(policy_dir).version
        deadline = time.monotonic() + 10
        streak = 0
        while time.monotonic() < deadline and streak < 40:
            # fresh connections spread over both workers
            with httpx.Client(trust_env=False) as fresh:
                version = fresh.get(gw.url + "/healthz").json()["policy"]
            streak = streak + 1 if version == new else 0
        assert streak >= 40
    finally:
        gw.stop()


def test_admin_token_guards_admin_endpoints(policy_dir):
    gw = start_gateway(policy_dir, policy_dir, "--no-watch", env={"EDGERULES_ADMIN_TOKEN": "s3cret-admin"})
    try:
        assert gw.http.get("/admin/policy").status_code == 401
        assert gw.post("/admin/reload").status_code == 401
        ok = gw.http.get("/admin/policy", headers={"authorization": "Bearer s3cret-admin"})
        assert ok.status_code == 200 and ok.json()["version"]
    finally:
        gw.stop()


def test_admin_refuses_non_loopback_clients_without_a_token(policy_dir, monkeypatch):
    from starlette.testclient import TestClient
    from edgerules.gateway.server import create_app

    monkeypatch.delenv("EDGERULES_ADMIN_TOKEN", raising=False)
    app = create_app(str(policy_dir), watch=False)
    with TestClient(app, client=("203.0.113.9", 5000)) as client:
        resp = client.get("/admin/policy")
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_forbidden"
        assert client.post("/admin/reload").status_code == 403


def test_inflight_request_finishes_on_its_policy_and_changed_provider_gets_a_new_client(tmp_path):
    from procs import start_upstream
    slow, fresh = start_upstream("--latency", "1s"), start_upstream()
    d = tmp_path / "rules"
    d.mkdir()
    (d / "p.rules").write_text(f'provider up {{ url "{slow.url}" }}\nrule r {{ route up/m }}\n')
    gw = start_gateway(d, d, "--no-watch")
    try:
        old = gw.http.get("/healthz").json()["policy"]
        with httpx.Client(base_url=gw.url, trust_env=False, timeout=10) as other:
            import threading
            result = {}
            t = threading.Thread(target=lambda: result.setdefault("r", other.post(
                "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})))
            t.start()
            wait_until(lambda: slow.stats()["chat"] == 1, what="the request reaching the slow upstream")
            (d / "p.rules").write_text(f'provider up {{ url "{fresh.url}" }}\nrule r {{ route up/m }}\n')
            assert gw.post("/admin/reload").json()["ok"] is True
            after = gw.chat("m")
            t.join(5)
        assert result["r"].status_code == 200
        assert result["r"].headers["x-edgerules-policy"] == old
        assert after.headers["x-edgerules-policy"] != old
        assert slow.stats()["chat"] == 1 and fresh.stats()["chat"] == 1
        assert "providers replaced: up" in gw.output()
    finally:
        gw.stop()
        slow.stop()
        fresh.stop()


def test_circuit_state_survives_a_reload(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    text = 'provider down {{ url "http://127.0.0.1:9/v1" cooldown 60s after 1 failures }}\n{extra}rule r {{ route down/m }}\n'
    (d / "p.rules").write_text(text.format(extra=""))
    gw = start_gateway(d, d, "--no-watch")
    try:
        assert gw.chat("m").status_code == 502
        assert gw.http.get("/admin/policy").json()["health"]["down"]["open"] is True
        (d / "p.rules").write_text(text.format(extra='rule extra { when model == "zzz" deny 403 "no" }\n'))
        assert gw.post("/admin/reload").json()["changed"] is True
        assert gw.http.get("/admin/policy").json()["health"]["down"]["open"] is True
    finally:
        gw.stop()


def test_a_half_used_limit_is_still_half_used_after_a_reload(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    text = ('provider demo {{ format echo }}\n{extra}'
            'rule capped {{ limit requests 4 per 1m route demo/echo }}\n')
    (d / "p.rules").write_text(text.format(extra=""))
    gw = start_gateway(d, d, "--no-watch")
    try:
        for _ in range(2):
            assert gw.chat("m").status_code == 200
        before = gw.chat("m")
        assert before.headers["x-ratelimit-remaining-requests"] == "1"
        (d / "p.rules").write_text(text.format(extra='rule unrelated { when model == "x" deny 403 "no" }\n'))
        assert gw.post("/admin/reload").json()["changed"] is True
        after = gw.chat("m")
        assert after.status_code == 200 and after.headers["x-edgerules-policy"] != before.headers["x-edgerules-policy"]
        assert after.headers["x-ratelimit-remaining-requests"] == "0"
        refused = gw.chat("m")
        assert refused.status_code == 429 and "capped" in refused.json()["error"]["message"]
    finally:
        gw.stop()
