"""Hot reload against careless edits: files caught half-written, a policy that drops every key,
conditions too deep to compile, and a watcher that must survive all of them (a real gateway)."""
from __future__ import annotations

import os
import time

import httpx

from edgerules import Source
from edgerules.lang.policy import version_of
from gw import start_gateway
from procs import wait_until

HEAD = 'provider demo { format echo }\nrule all { route demo/echo }\n'
KEY = 'key team { secret env("EDGERULES_TEST_KEY") }\n'
ENV = {"EDGERULES_TEST_KEY": "team-secret-1"}
BODY = {"model": "anything", "messages": [{"role": "user", "content": "hi"}]}


def _keyless_status(gw) -> int:
    return gw.http.post("/v1/chat/completions", json=BODY).status_code


def _version(gw) -> str:
    return gw.admin_policy()["version"]


def _reload_answer(gw, force: bool = False) -> httpx.Response:
    return gw.http.post("/admin/reload" + ("?force=1" if force else ""))


def test_a_file_written_in_two_pauses_is_never_installed_half_way(tmp_path):
    path = tmp_path / "policy" / "policy.rules"
    gw = start_gateway(HEAD + KEY, tmp_path / "policy", env=ENV)
    try:
        first = _version(gw)
        # The key block comes last, as the writer had it: a half file is an open gateway.
        final = HEAD.replace("rule all", "rule all_again") + KEY
        half = final[: final.index("key team")]
        half_version = version_of([Source(str(path), half)])
        with open(path, "w") as f:                       # in place: truncate, then write in pieces
            f.write(half)
            f.flush()
            os.fsync(f.fileno())
            time.sleep(0.12)                             # a pause shorter than the settle period
            f.write(final[len(half):])
        final_version = version_of([Source(str(path), final)])
        wait_until(lambda: _version(gw) == final_version, 30, what="the complete file to be served")
        assert first != final_version
        assert half_version not in gw.output()           # never loaded, so never logged
        assert _keyless_status(gw) == 401
    finally:
        gw.stop()


def test_an_emptied_file_is_refused_until_forced(tmp_path):
    path = tmp_path / "policy" / "policy.rules"
    gw = start_gateway(HEAD + KEY, tmp_path / "policy", env=ENV)
    try:
        live = _version(gw)
        path.write_text("")
        error = wait_until(lambda: gw.admin_policy()["last_error"], 30, what="the refusal")
        assert "refused: the new policy has no rules and no providers and no keys" in error["message"]
        assert error["diagnostics"][0]["code"] == "reload-refused"
        assert _version(gw) == live and _keyless_status(gw) == 401
        answer = _reload_answer(gw)
        assert answer.status_code == 422 and "force=1" in answer.text
        forced = _reload_answer(gw, force=True)
        assert forced.status_code == 200 and forced.json()["ok"] is True
        assert _version(gw) != live
        assert _keyless_status(gw) == 404                # an empty policy routes nothing
    finally:
        gw.stop()


def test_dropping_only_the_keys_is_refused_too(tmp_path):
    path = tmp_path / "policy" / "policy.rules"
    gw = start_gateway(HEAD + KEY, tmp_path / "policy", env=ENV)
    try:
        live = _version(gw)
        path.write_text(HEAD)
        error = wait_until(lambda: gw.admin_policy()["last_error"], 30, what="the refusal")
        assert "has no keys" in error["message"]
        assert _version(gw) == live and _keyless_status(gw) == 401
    finally:
        gw.stop()


def test_a_condition_too_deep_is_an_error_and_later_edits_still_load(tmp_path):
    path = tmp_path / "policy" / "policy.rules"
    gw = start_gateway(HEAD, tmp_path / "policy")
    try:
        live = _version(gw)
        path.write_text(HEAD + 'rule deep {\n    when ' + "not " * 5000 + 'model == "x"\n    tag "d"\n}\n')
        error = wait_until(lambda: gw.admin_policy()["last_error"], 30, what="the reload error")
        assert error["diagnostics"][0]["code"] == "too-deep"
        assert error["location"].endswith("policy.rules:4:10") or ":4:" in error["location"]
        assert _version(gw) == live
        good = HEAD + 'rule tagged { tag "ok" }\n'
        path.write_text(good)                            # the watcher and poller are still alive
        wait_until(lambda: _version(gw) == version_of([Source(str(path), good)]), 30,
                   what="the good edit to load after the failed one")
        assert gw.admin_policy()["last_error"] is None
    finally:
        gw.stop()


def test_a_large_in_place_write_ends_on_the_complete_file(tmp_path):
    path = tmp_path / "policy" / "policy.rules"
    gw = start_gateway(HEAD, tmp_path / "policy")
    try:
        padding = ("# " + "x" * 1000 + "\n") * 200       # 200 KB of comments, written slowly
        final = padding + HEAD + 'rule late { tag "late" }\n'
        with open(path, "w") as f:
            for start in range(0, len(final), 20_000):
                f.write(final[start:start + 20_000])
                f.flush()
                time.sleep(0.05)
        final_version = version_of([Source(str(path), final)])
        wait_until(lambda: _version(gw) == final_version, 60, what="the complete file to be served")
        assert "late" in gw.admin_policy()["rules"]
    finally:
        gw.stop()
