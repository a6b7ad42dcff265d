"""The access log of a real `edgerules serve`: one JSON line per request, `log none` and `log full`,
and `--log-level warning` turning it off."""
from __future__ import annotations

import orjson
import pytest

from procs import wait_until

POLICY = """
provider up {{ url "{url}" }}
key team {{ secret "sk-access-log-test" }}
rule quiet {{ when header("x-log") == "none" tag "quiet" log none }}
rule loud  {{ when header("x-log") == "full" tag "loud" log full }}
rule plain {{ when header("x-log") == "meta" tag "plain" }}
rule r     {{ route up/m }}
"""
AUTH = {"authorization": "Bearer sk-access-log-test"}
MARKER = "access-log-marker"


def access_entries(gw) -> list[dict]:
    """The JSON of every line the `edgerules.access` logger printed."""
    tag = "edgerules.access: "
    return [orjson.loads(line.split(tag, 1)[1]) for line in gw.output().splitlines() if tag in line]


def ask(gw, level: str, content: str):
    resp = gw.chat("m", content, headers={**AUTH, "x-log": level})
    assert resp.status_code == 200, resp.text
    return resp


@pytest.fixture
def policy(upstream):
    return POLICY.format(url=upstream.url)


def test_one_line_per_request_none_drops_it_full_adds_the_body(gateways, policy):
    gw = gateways(policy)
    ask(gw, "none", f"{MARKER} none")
    plain = ask(gw, "meta", f"{MARKER} meta")
    ask(gw, "full", f"{MARKER} full")
    # A JSON answer is logged before it is sent, so its line is already there; wait anyway, on the
    # line itself, in case the output is read before the process's write lands.
    gw.wait_for_output('"loud"')
    entries = access_entries(gw)
    assert [e["tags"] for e in entries] == [["plain"], ["loud"]]     # nothing for `log none`
    meta, full = entries
    assert meta["status"] == 200 and meta["route"] == "up/m" and meta["attempts"] == 1
    assert meta["cache"] == "BYPASS" and meta["key"] == "team" and meta["rules"] == ["plain", "r"]
    assert meta["policy"] == plain.headers["x-edgerules-policy"] and meta["ms"] >= 0
    assert meta["usage"]["total_tokens"] > 0
    assert "request" not in meta and MARKER not in orjson.dumps(meta).decode()
    assert full["request"] == {"model": "m", "messages": [{"role": "user", "content": f"{MARKER} full"}]}
    assert f"{MARKER} none" not in gw.output()
    assert "sk-access-log-test" not in gw.output()     # the client's key never reaches a log


def test_a_refused_key_is_logged_too(gateways, policy):
    gw = gateways(policy)
    assert gw.chat("m", "x", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert ask(gw, "meta", "after").status_code == 200
    gw.wait_for_output('"plain"')
    assert [e["status"] for e in access_entries(gw)] == [401, 200]


def test_log_level_warning_turns_access_lines_off(gateways, policy):
    gw = gateways(policy, "--log-level", "warning")
    for level in ("meta", "full", "none"):
        ask(gw, level, f"{MARKER} {level}")
    # Each answer was logged (or not) before it was sent: whatever the process printed is here.
    stream = gw.http.post("/v1/chat/completions", headers={**AUTH, "x-log": "full"},
                          json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "s"}]})
    assert stream.status_code == 200 and stream.text.rstrip().endswith("[DONE]")
    wait_until(lambda: gw.finished_requests() == 4, what="the stream to finish")
    assert access_entries(gw) == []
    assert MARKER not in gw.output() and " INFO " not in gw.output()
