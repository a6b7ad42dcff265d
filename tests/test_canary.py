"""Canary rollout against a real `edgerules serve` and real `edgerules upstream` processes: a sticky
share of keys, promotion (reloads then follow its path), dropping, and the automatic drop."""
from __future__ import annotations

import hashlib
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from gw import start_gateway
from procs import EDGERULES, wait_until

KEYS = [f"k{i}" for i in range(200)]
KEY_DECLS = "".join(f'key {k} {{ sha256 "{hashlib.sha256(("sk-" + k).encode()).hexdigest()}" }}\n' for k in KEYS)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def _policy(url: str, model: str, extra: str = "") -> str:
    return f'provider up {{ url "{url}" }}\n{KEY_DECLS}rule r {{ {extra}route up/{model} }}\n'


def _write(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.rules").write_text(text)
    return directory


def _ask(gw, key: str) -> httpx.Response:
    return gw.http.post("/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer sk-{key}"})


def _versions(gw, keys) -> dict[str, tuple[str, int, bool]]:
    """key -> (x-edgerules-policy, status, canary header), eight requests at a time."""
    def one(key):
        r = _ask(gw, key)
        return key, (r.headers["x-edgerules-policy"], r.status_code, r.headers.get("x-edgerules-canary") == "true")
    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, keys))


def _start_canary(gw, path, percent, **extra) -> httpx.Response:
    return gw.http.post("/admin/canary", json={"path": str(path), "percent": percent, **extra})


def test_canary_takes_its_share_sticky_by_key_then_is_promoted_and_reloads_follow_it(tmp_path, upstream):
    stable_dir = _write(tmp_path / "stable", _policy(upstream.url, "stable-model"))
    canary_dir = _write(tmp_path / "canary", _policy(upstream.url, "canary-model"))
    gw = start_gateway(stable_dir, stable_dir)     # watching: promotion must move the watcher
    try:
        stable = gw.admin_policy()["version"]
        started = _start_canary(gw, canary_dir, 20)
        assert started.status_code == 200, started.text
        canary = started.json()["canary"]["version"]
        assert canary != stable

        first = _versions(gw, KEYS)
        assert all(status == 200 for _, status, _ in first.values())
        on_canary = [k for k, (version, _, flagged) in first.items() if version == canary]
        assert all(flagged == (version == canary) for version, _, flagged in first.values())
        assert {v for v, _, _ in first.values()} == {stable, canary}
        assert 10 <= len(on_canary) <= 75, f"{len(on_canary)} of 200 keys on a 20% canary"
        again = _versions(gw, KEYS[:100])          # sticky: the same key, the same version
        assert {k: v[0] for k, v in again.items()} == {k: first[k][0] for k in KEYS[:100]}

        shown = gw.admin_policy()
        assert shown["canary"]["version"] == canary and shown["canary"]["percent"] == 20
        assert shown["canary"]["path"] == str(canary_dir)
        assert shown["canary"]["requests"] == len(on_canary) + sum(1 for k in KEYS[:100] if k in on_canary)
        assert shown["canary"]["5xx"] == 0 and shown["canary"]["error_rate"] == 0
        assert shown["stable"]["version"] == stable and shown["stable"]["percent"] == 80
        assert shown["stable"]["requests"] == 300 - shown["canary"]["requests"]
        lines = [json.loads(line.split("edgerules.access: ", 1)[1]) for line in gw.output().splitlines()
                 if "edgerules.access: " in line]
        assert {line["policy"] for line in lines if line.get("canary")} == {canary}
        assert {line["policy"] for line in lines if not line.get("canary")} == {stable}

        promoted = gw.http.post("/admin/canary/promote")
        assert promoted.status_code == 200, promoted.text
        assert promoted.json()["version"] == canary and promoted.json()["path"] == str(canary_dir)
        after = _versions(gw, KEYS[:50])
        assert {(v, s, flagged) for v, s, flagged in after.values()} == {(canary, 200, False)}
        shown = gw.admin_policy()
        assert shown["version"] == canary and shown["path"] == str(canary_dir) and shown["canary"] is None
        assert shown["last_canary"]["outcome"] == "promoted" and shown["last_canary"]["version"] == canary
        assert gw.http.post("/admin/canary/promote").status_code == 404

        # Reloads now come from the promoted policy's path.
        (canary_dir / "policy.rules").write_text(_policy(upstream.url, "edited-model"))
        wait_until(lambda: gw.http.get("/healthz").json()["policy"] not in (stable, canary), 30,
                   what="an edit of the promoted policy going live")
        assert _ask(gw, "k1").headers["x-edgerules-route"] == "up/edited-model"
    except BaseException:
        print(gw.output()[-5000:])
        raise
    finally:
        gw.stop()


def test_a_dropped_canary_sends_everyone_back(tmp_path, upstream, gateways):
    gw = gateways(_policy(upstream.url, "stable-model"))
    stable = gw.admin_policy()["version"]
    canary_dir = _write(tmp_path / "canary", _policy(upstream.url, "canary-model"))
    assert _start_canary(gw, canary_dir, 50).status_code == 200
    assert len({v for v, _, _ in _versions(gw, KEYS[:60]).values()}) == 2
    dropped = gw.http.delete("/admin/canary")
    assert dropped.status_code == 200 and dropped.json()["last_canary"]["outcome"] == "dropped"
    assert {v for v, _, _ in _versions(gw, KEYS[:60]).values()} == {stable}
    shown = gw.admin_policy()
    assert shown["canary"] is None and shown["last_canary"]["reason"] == "DELETE /admin/canary"
    missing = gw.http.delete("/admin/canary")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_canary"


def test_a_canary_whose_upstream_fails_is_dropped_by_itself(tmp_path, upstreams, gateways):
    good, bad = upstreams(), upstreams("--fail-rate", "1")
    # The same provider name on both sides: the canary's failures must not open the stable's circuit.
    gw = gateways(_policy(good.url, "m"))
    canary_dir = _write(tmp_path / "canary", _policy(bad.url, "m"))
    started = _start_canary(gw, canary_dir, 50, max_error_rate=0.2, min_requests=20)
    assert started.status_code == 200, started.text
    canary = started.json()["canary"]["version"]
    seen = {}
    for key in KEYS:      # bounded: at most 200 requests, stopping once the canary is gone
        r = _ask(gw, key)
        seen.setdefault(r.headers["x-edgerules-policy"], []).append(r.status_code)
        if gw.admin_policy()["canary"] is None:
            break
    shown = gw.admin_policy()
    assert shown["canary"] is None, f"the canary survived {len(seen.get(canary, []))} failing requests"
    outcome = shown["last_canary"]
    assert outcome["outcome"] == "auto-dropped" and outcome["version"] == canary
    assert outcome["requests"] >= 20 and outcome["5xx"] == outcome["requests"]
    assert outcome["stable"]["5xx"] == 0 and "exceeds the stable's" in outcome["reason"]
    assert set(seen.pop(canary)) == {503}
    assert set(sum(seen.values(), [])) == {200}   # the stable never failed
    assert "canary " + canary + " auto-dropped" in gw.output()
    assert {s for _, s, _ in _versions(gw, KEYS[:40]).values()} == {200}
    assert bad.stats()["requests"] >= 20 and good.stats()["requests"] > 0


def test_a_broken_canary_is_a_422_with_its_position_and_changes_nothing(tmp_path, upstream, gateways):
    gw = gateways(_policy(upstream.url, "m"))
    before = gw.admin_policy()
    broken = _write(tmp_path / "broken", _policy(upstream.url, "m", extra='when modle == "x" '))
    r = _start_canary(gw, broken, 10)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "canary_invalid" and error["param"] == "path"
    assert error["location"] == f"{broken / 'policy.rules'}:{len(KEYS) + 2}:15"
    assert "error[unknown-field]" in error["message"] and "^^^^^" in error["message"]
    assert gw.http.post("/admin/canary", json={"path": str(tmp_path / "nowhere"), "percent": 10}).status_code == 422
    assert gw.http.post("/admin/canary", json={"path": str(broken), "percent": 150}).json()["error"]["param"] == "percent"
    assert gw.http.post("/admin/canary", json={"path": str(broken)}).status_code == 400
    assert gw.http.post("/admin/canary", content=b"{").status_code == 400
    opened = _write(tmp_path / "open", f'provider up {{ url "{upstream.url}" }}\nrule r {{ route up/m }}\n')
    refused = _start_canary(gw, opened, 10)    # a canary without keys would open the gateway
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "canary_refused"
    after = gw.admin_policy()
    assert after["canary"] is None and after["last_canary"] is None and after["version"] == before["version"]


def test_every_canary_endpoint_is_behind_the_admin_guard(tmp_path, upstream, gateways):
    gw = gateways(_policy(upstream.url, "m"), env={"EDGERULES_ADMIN_TOKEN": "t0ken"})
    canary_dir = _write(tmp_path / "canary", _policy(upstream.url, "c"))
    body = {"path": str(canary_dir), "percent": 10}
    calls = [("POST", "/admin/canary", body), ("POST", "/admin/canary/promote", None),
             ("DELETE", "/admin/canary", None)]
    for method, path, payload in calls:
        for headers in ({}, {"authorization": "Bearer wrong"}):
            r = gw.http.request(method, path, json=payload, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_admin_token", (method, path)
    good = {"authorization": "Bearer t0ken"}
    assert gw.http.get("/admin/policy", headers=good).json()["canary"] is None
    assert gw.http.post("/admin/canary", json=body, headers=good).status_code == 200
    assert gw.http.delete("/admin/canary", headers=good).status_code == 200

    plain = gateways(_policy(upstream.url, "m"))   # no token: loopback only, and a forwarded request is not
    for method, path, payload in calls:
        r = plain.http.request(method, path, json=payload, headers={"x-forwarded-for": "203.0.113.9"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_forbidden", (method, path)


def test_serve_starts_with_a_canary_and_refuses_a_broken_one(tmp_path, upstream, gateways):
    canary_dir = _write(tmp_path / "canary", f'provider up {{ url "{upstream.url}" }}\nrule r {{ route up/c }}\n')
    gw = gateways(f'provider up {{ url "{upstream.url}" }}\nrule r {{ route up/s }}\n',
                  "--canary", str(canary_dir), "--canary-percent", "100")
    shown = gw.admin_policy()
    assert shown["canary"]["percent"] == 100 and shown["canary"]["path"] == str(canary_dir)
    # Open gateway: sticky by client address; every request here comes from 127.0.0.1.
    routes = {gw.chat("m").headers["x-edgerules-route"] for _ in range(10)}
    assert routes == {"up/c"}
    assert gw.admin_policy()["canary"]["requests"] == 10

    broken = _write(tmp_path / "broken", 'provider up { format echo }\nrule r { route nope/m }\n')
    out = subprocess.run([EDGERULES, "serve", "--no-watch", "--rules", str(gw.rules), "--canary", str(broken)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"{broken / 'policy.rules'}:2:" in out.stderr and "canary" in out.stderr
    bad_share = subprocess.run([EDGERULES, "serve", "--canary-percent", "101"], capture_output=True, text=True,
                               timeout=60)
    assert bad_share.returncode == 2 and "--canary-percent" in bad_share.stderr
