"""The response cache is per key and per user unless a rule says `shared` (a real gateway and upstream)."""
from __future__ import annotations

import pytest

KEYS = ('key alice { secret env("K_ALICE") }\nkey bob { secret env("K_BOB") }\n')
ENV = {"K_ALICE": "alice-secret-1", "K_BOB": "bob-secret-2"}


def _policy(upstream_url: str, cache: str) -> str:
    return f'provider up {{ url "{upstream_url}" }}\n{KEYS}rule r {{ {cache} route up/m }}\n'


def _ask(gw, secret: str, **fields):
    return gw.chat("m", "same question", headers={"authorization": f"Bearer {secret}"}, **fields)


@pytest.fixture
def counting(upstreams):
    up = upstreams()
    return up, lambda: up.stats()["chat"]


def test_a_key_never_receives_another_keys_cached_answer(counting, gateways):
    up, calls = counting
    gw = gateways(_policy(up.url, "cache ttl 1h"), env=ENV)
    first = _ask(gw, "alice-secret-1")
    assert first.headers["x-edgerules-cache"] == "MISS"
    assert _ask(gw, "alice-secret-1").headers["x-edgerules-cache"] == "HIT"
    other = _ask(gw, "bob-secret-2")
    assert other.status_code == 200 and other.headers["x-edgerules-cache"] == "MISS"
    assert calls() == 2


def test_the_user_field_scopes_the_cache_too(counting, gateways):
    up, calls = counting
    gw = gateways(_policy(up.url, "cache ttl 1h"), env=ENV)
    assert _ask(gw, "alice-secret-1", user="u1").headers["x-edgerules-cache"] == "MISS"
    assert _ask(gw, "alice-secret-1", user="u2").headers["x-edgerules-cache"] == "MISS"
    assert _ask(gw, "alice-secret-1", user="u1").headers["x-edgerules-cache"] == "HIT"
    assert calls() == 2


def test_shared_serves_one_answer_to_every_caller(counting, gateways):
    up, calls = counting
    gw = gateways(_policy(up.url, "cache ttl 1h shared"), env=ENV)
    assert _ask(gw, "alice-secret-1", user="u1").headers["x-edgerules-cache"] == "MISS"
    hit = _ask(gw, "bob-secret-2", user="u2")
    assert hit.headers["x-edgerules-cache"] == "HIT"
    assert calls() == 1


def test_check_explains_the_scope(gateways, counting):
    up, _ = counting
    gw = gateways(_policy(up.url, "cache ttl 1h"), env=ENV)
    notes = [w for w in gw.admin_policy()["notes"] if w["code"] == "cache-scope"]
    assert notes and notes[0]["severity"] == "note" and "per key and per user" in notes[0]["message"]
