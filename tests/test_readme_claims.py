"""README promises checked through a real `edgerules serve` and real fake upstreams: the circuit
breaker on 401/403, `sha256` keys, the completion reserve of budgets, the on-disk hash poll, the
old connection pool closed on reload, and routing by `x-edgerules-metadata`."""
from __future__ import annotations

import hashlib

import httpx
import orjson
import pytest

from edgerules.lang.policy import load_policy
from edgerules.lang.schema import estimate_tokens
from gw import start_gateway
from procs import CLOSED_FIRST, ESTABLISHED, client_connections, server_ends, wait_until


# ---- the circuit breaker -----------------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
def test_upstream_401_and_403_open_the_circuit_and_the_first_success_after_cooldown_closes_it(
        upstreams, gateways, status):
    bad, good = upstreams(), upstreams()
    gw = gateways(f'provider bad {{ url "{bad.url}" cooldown 1s after 2 failures }}\n'
                  f'provider good {{ url "{good.url}" }}\n'
                  'rule r { route fallback [bad/m, good/m] }')
    bad.control(status=status)   # a bad provider key: not the client's fault, so it fails over
    for _ in range(2):
        resp = gw.chat("m")
        assert resp.status_code == 200 and resp.headers["x-edgerules-route"] == "good/m"
    gw.wait_for_output("circuit for provider 'bad' opened")
    assert bad.stats()["chat"] == 2
    # While it is open the fallback skips it; once the cooldown is over, it is tried again.
    bad.control(status=None)
    wait_until(lambda: gw.admin_policy()["health"]["bad"]["open"] is False, what="the cooldown to end")
    resp = gw.chat("m")
    assert resp.headers["x-edgerules-route"] == "bad/m"
    health = gw.admin_policy()["health"]["bad"]
    assert health["open"] is False and health["failures"] == 0
    # The success reset the count: one new failure does not reopen a circuit that needs two.
    bad.control(fail_next=1, fail_status=status)
    assert gw.chat("m").headers["x-edgerules-route"] == "good/m"
    health = gw.admin_policy()["health"]["bad"]
    assert health["open"] is False and health["failures"] == 1
    assert gw.chat("m").headers["x-edgerules-route"] == "bad/m"


def test_a_client_error_from_the_upstream_does_not_count_as_a_failure(upstreams, gateways):
    up = upstreams()
    gw = gateways(f'provider up {{ url "{up.url}" cooldown 60s after 1 failures }}\nrule r {{ route up/m }}')
    up.control(status=422)
    assert gw.chat("m").status_code == 422
    health = gw.admin_policy()["health"].get("up", {"open": False, "failures": 0})
    assert health["open"] is False and health["failures"] == 0


# ---- keys --------------------------------------------------------------------------------------

def test_a_sha256_key_authenticates_a_real_request(upstreams, gateways):
    up = upstreams()
    secret = "sk-only-the-digest-is-in-the-policy"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    gw = gateways(f'provider up {{ url "{up.url}" }}\nkey ops {{ sha256 "{digest}" }}\n'
                  'rule ops_only { when key == "ops" tag "ops" }\nrule r { route up/m }')
    resp = gw.chat("m", headers={"authorization": f"Bearer {secret}"})
    assert resp.status_code == 200 and resp.headers["x-edgerules-rules"] == "ops_only,r"
    assert up.stats()["chat"] == 1
    assert "authorization" not in up.stats()["last_headers"]   # the client's key is not forwarded
    for headers in ({"authorization": "Bearer sk-wrong"}, {"authorization": f"Bearer {digest}"}, {}):
        refused = gw.chat("m", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.json()["error"]["code"] in ("invalid_api_key", "missing_api_key")
    assert up.stats()["chat"] == 1                             # no upstream call for a bad key


# ---- budgets without max_tokens ----------------------------------------------------------------

def test_a_budget_holds_the_completion_reserve_for_a_request_without_max_tokens(upstreams, tmp_path):
    up = upstreams()
    text = (f'provider up {{ url "{up.url}" }}\n'
            'rule budget { limit tokens 5_000 per 1m route up/m }\n')
    remaining = {}
    for reserve in ("100", "700"):
        gw = start_gateway(text, tmp_path / reserve, "--no-watch",
                           env={"EDGERULES_RESERVE_COMPLETION_TOKENS": reserve})
        try:
            body = {"model": "m", "messages": [{"role": "user", "content": "how much is held? " * 5}]}
            first = gw.post("/v1/chat/completions", json=body)
            assert first.status_code == 200
            held = estimate_tokens(body) + int(reserve)
            assert int(first.headers["x-ratelimit-remaining-tokens"]) == 5_000 - held
            # After the answer the hold is replaced by what was really spent.
            usage = first.json()["usage"]
            second = gw.post("/v1/chat/completions", json=body)
            assert int(second.headers["x-ratelimit-remaining-tokens"]) == 5_000 - usage["total_tokens"] - held
            # With max_tokens the client's own bound is held instead of the reserve.
            third = gw.post("/v1/chat/completions", json={**body, "max_tokens": 3})
            spent = 2 * usage["total_tokens"]
            assert int(third.headers["x-ratelimit-remaining-tokens"]) == 5_000 - spent - estimate_tokens(body) - 3
            remaining[reserve] = int(first.headers["x-ratelimit-remaining-tokens"])
        finally:
            gw.stop()
    assert remaining["100"] - remaining["700"] == 600


# ---- hot reload: the hash poll and the old pool ------------------------------------------------

def test_an_edit_the_watcher_cannot_see_is_found_by_the_hash_poll(tmp_path):
    # The policy file is a symlink to a file in another folder: the watcher watches the policy
    # folder, so an edit of the target raises no event there; only the hash poll can notice it.
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "real.rules"
    target.write_text('provider demo { format echo }\nrule r { when model == "m" route demo/one }\n')
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "policy.rules").symlink_to(target)
    gw = start_gateway(rules, tmp_path)
    try:
        assert gw.chat("m").headers["x-edgerules-route"] == "demo/one"
        target.write_text('provider demo { format echo }\nrule r { when model == "m" route demo/two }\n')
        new = load_policy(rules).version
        wait_until(lambda: gw.http.get("/healthz").json()["policy"] == new, what="the poll to load the edit")
        assert gw.chat("m").headers["x-edgerules-route"] == "demo/two"
        assert f"policy {new} loaded in" in gw.output()
        assert "(files differ from the live policy)" in gw.output()
        assert "(file change:" not in gw.output()
    finally:
        gw.stop()


def test_the_old_pool_is_closed_once_its_requests_are_done_when_a_provider_url_changes(upstreams, tmp_path):
    # Streams from the old upstream send one event, then stay silent until the client leaves. The
    # test never talks to the old upstream itself, so every connection to it is the gateway's.
    old, new = upstreams("--chunk-delay", "10m"), upstreams()
    d = tmp_path / "rules"
    d.mkdir()
    (d / "p.rules").write_text(f'provider up {{ url "{old.url}" }}\nrule r {{ route up/m }}\n')
    gw = start_gateway(d, d, "--no-watch")
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b c d"}]}

    def gateway_to_old() -> list[str]:
        return client_connections(old.port, gw.pid)

    try:
        assert gw.chat("m").status_code == 200
        assert ESTABLISHED in gateway_to_old()                 # kept alive in the old pool
        with httpx.Client(base_url=gw.url, trust_env=False, timeout=60) as client:
            with client.stream("POST", "/v1/chat/completions", json=body) as held:
                lines = held.iter_lines()   # kept: a dropped iterator would close the stream
                assert held.status_code == 200 and next(lines).startswith("data: ")
                (d / "p.rules").write_text(f'provider up {{ url "{new.url}" }}\nrule r {{ route up/m }}\n')
                reloaded = gw.post("/admin/reload").json()
                assert reloaded["ok"] is True and "providers replaced: up" in reloaded["summary"]
                assert gw.chat("m").headers["x-edgerules-policy"] == reloaded["version"]
                assert new.stats()["chat"] == 1
                # The request that started on the old policy still streams from the old pool.
                assert ESTABLISHED in gateway_to_old()
        # It is done now: the gateway closes the old pool, and with it every connection to the
        # old upstream, the idle one included.
        wait_until(lambda: not gateway_to_old(), what="the gateway to close its connections to the old upstream")
        # Closed by the gateway, not dropped by the upstream's own idle timeout (5s): the server
        # end of a connection the server closed first stays in FIN_WAIT or TIME_WAIT for a while.
        assert not CLOSED_FIRST & set(server_ends(old.port))
        assert ESTABLISHED in client_connections(new.port, gw.pid)
    finally:
        gw.stop()


# ---- x-edgerules-metadata ----------------------------------------------------------------------

def test_metadata_header_routes_through_the_server(upstreams, gateways):
    a, b = upstreams(), upstreams()
    gw = gateways(f'provider a {{ url "{a.url}" }}\nprovider b {{ url "{b.url}" }}\n'
                  'rule team_x { when metadata.team == "x" route a/m }\n'
                  'rule rest { route b/m }')
    header = "x-edgerules-metadata"
    cases = [({"team": "x"}, "a/m"), ({"team": "y"}, "b/m"), ({"team": "x", "extra": 1}, "a/m"),
             ({"other": "x"}, "b/m"), (None, "b/m")]
    for metadata, route in cases:
        headers = {header: orjson.dumps(metadata).decode()} if metadata is not None else {}
        resp = gw.chat("m", headers=headers)
        assert resp.status_code == 200 and resp.headers["x-edgerules-route"] == route, metadata
    assert a.stats()["chat"] == 2 and b.stats()["chat"] == 3
    for bad in ("not json", '["team", "x"]'):
        resp = gw.chat("m", headers={header: bad})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == header
    assert a.stats()["chat"] == 2 and b.stats()["chat"] == 3
