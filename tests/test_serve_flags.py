"""`edgerules serve` settings: each from its flag, else its variable, else its default; sizes validated."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from edgerules.gateway import settings
from gw import start_gateway
from procs import EDGERULES, free_port, start_process

POLICY = 'provider demo { format echo }\nrule cached { cache ttl 1h route demo/echo }\n'


def test_cache_max_entries_flag_bounds_the_cache(tmp_path):
    gw = start_gateway(POLICY, tmp_path, "--no-watch", "--cache-max-entries", "1")
    try:
        assert gw.chat("m", "first").headers["x-edgerules-cache"] == "MISS"
        assert gw.chat("m", "first").headers["x-edgerules-cache"] == "HIT"
        assert gw.chat("m", "second").headers["x-edgerules-cache"] == "MISS"   # evicts "first"
        assert gw.chat("m", "first").headers["x-edgerules-cache"] == "MISS"
    finally:
        gw.stop()


def test_bad_sizes_are_refused_before_serving():
    for args in (["--cache-max-bytes", "12zz"], ["--max-body", "lots"], ["--cache-max-entries", "0"]):
        out = subprocess.run([EDGERULES, "serve", "--no-watch", *args],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("edgerules serve: ")


# ---- flag > environment > default, for every setting --------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
# A value for each setting that differs from its default, and a second one for the flag.
OTHER = {"rules": ("a/", "b/"), "host": ("127.0.0.2", "127.0.0.3"), "port": ("9001", "9002"),
         "state": ("redis://h:1", "redis://h:2"), "workers": ("2", "3"), "max_body": ("1KiB", "2KiB"),
         "log_level": ("warning", "error"), "cache_max_entries": ("5", "6"),
         "cache_max_bytes": ("1MiB", "2MiB"), "max_header_line": ("1KiB", "2KiB"),
         "max_header_bytes": ("4KiB", "8KiB"), "max_headers": ("20", "30"), "header_timeout": ("1s", "2s"),
         "body_timeout": ("3s", "4s"), "keep_alive_timeout": ("6s", "7s"), "max_connections": ("7", "8"),
         "forwarded_allow_ips": ("10.0.0.1", "10.0.0.2"), "reload_settle": ("1s", "2s"),
         "max_upstream_body": ("1MiB", "2MiB"), "max_upstream_event": ("4KiB", "8KiB"),
         "max_parsed_answer": ("1MiB", "2MiB"),
         "log_store": ("none", "sqlite:///tmp/x.db"), "log_retention": ("2d", "12h"),
         "log_max_rows": ("5", "6"), "log_queue": ("7", "8"), "log_writer": ("process", "thread"),
         "otel_endpoint": ("http://127.0.0.1:4318", "http://127.0.0.1:4319"),
         "canary": ("c/", "d/"), "canary_percent": ("10", "20"), "canary_max_error_rate": ("0.1", "0.2"),
         "canary_min_requests": ("10", "20")}


@pytest.mark.parametrize("setting", settings.SETTINGS, ids=lambda s: s.name)
def test_each_setting_takes_flag_then_environment_then_default(setting):
    if setting.metavar is None:     # the on/off switch: --watch / --no-watch, EDGERULES_WATCH=1/0
        assert settings.resolve({})[setting.name] is True
        assert settings.resolve({}, {setting.env: "0"})[setting.name] is False
        assert settings.resolve({setting.name: True}, {setting.env: "0"})[setting.name] is True
        return
    from_env, from_flag = OTHER[setting.name]
    default = settings.resolve({}, {})[setting.name]
    assert default == setting.parse(setting.default)
    assert settings.resolve({}, {setting.env: from_env})[setting.name] == setting.parse(from_env) != default
    assert settings.resolve({setting.name: from_flag}, {setting.env: from_env})[setting.name] == setting.parse(from_flag)


def test_every_setting_has_a_flag_in_serve_and_a_row_in_readme():
    help_text = subprocess.run([EDGERULES, "serve", "--help"], capture_output=True, text=True, timeout=30).stdout
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `--")]
    for s in settings.SETTINGS:
        assert s.flag in help_text and s.env in help_text
        row = [r for r in rows if r.startswith((f"| `{s.flag} ", f"| `{s.flag}`"))]   # --canary, not --canary-percent
        assert len(row) == 1, f"README's configuration table has no row for {s.flag}"
        default = f"`{s.default}`" if s.default else "| unset |"   # an empty default reads "unset"
        assert f"`{s.env}`" in row[0] and default in row[0], row[0]


def _serve(tmp_path: Path, args=(), env=None, port_by="flag"):
    port = free_port()
    env = dict(env or {})
    if port_by == "flag":
        args = [*args, "--port", str(port)]
    else:
        env["EDGERULES_PORT"] = str(port)
    proc = start_process([EDGERULES, "serve", *args], f"http://127.0.0.1:{port}/healthz", timeout=20, env=env,
                         cwd=str(tmp_path))
    return proc, httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


def test_the_environment_configures_serve(tmp_path):
    (tmp_path / "env-rules").mkdir()
    (tmp_path / "env-rules" / "p.rules").write_text(POLICY)
    env = {"EDGERULES_RULES": str(tmp_path / "env-rules"), "EDGERULES_MAX_BODY": "1KiB",
           "EDGERULES_CACHE_MAX_ENTRIES": "1", "EDGERULES_MAX_HEADERS": "20", "EDGERULES_WATCH": "0",
           "EDGERULES_LOG_LEVEL": "warning"}
    proc, client = _serve(tmp_path, env=env, port_by="env")
    with proc, client:
        assert client.get("/admin/policy").json()["rules"] == ["cached"]
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
        assert client.post("/v1/chat/completions", json=big).status_code == 413
        assert client.post("/v1/chat/completions", json=CHAT).headers["x-edgerules-cache"] == "MISS"
        other = {**CHAT, "messages": [{"role": "user", "content": "other"}]}
        assert client.post("/v1/chat/completions", json=other).headers["x-edgerules-cache"] == "MISS"
        assert client.post("/v1/chat/completions", json=CHAT).headers["x-edgerules-cache"] == "MISS"  # evicted
        many = {f"x-h{i}": "v" for i in range(25)}
        assert client.get("/healthz", headers=many).status_code == 431
        assert '"status": 200' not in proc.output() and "access" not in proc.output()   # warning: no access log


def test_flags_win_over_the_environment(tmp_path):
    (tmp_path / "flag-rules").mkdir()
    (tmp_path / "flag-rules" / "p.rules").write_text(POLICY)
    env = {"EDGERULES_RULES": str(tmp_path / "missing"), "EDGERULES_PORT": "1", "EDGERULES_MAX_BODY": "1KiB",
           "EDGERULES_MAX_HEADERS": "5", "EDGERULES_WATCH": "0"}
    proc, client = _serve(tmp_path, ["--rules", str(tmp_path / "flag-rules"), "--max-body", "1MiB",
                                     "--max-headers", "50", "--watch"], env=env)
    with proc, client:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
        assert client.post("/v1/chat/completions", json=big, headers={f"x-h{i}": "v" for i in range(10)}).status_code == 200
        (tmp_path / "flag-rules" / "p.rules").write_text(POLICY.replace("rule cached", "rule renamed"))
        deadline = time.monotonic() + 30    # --watch beat EDGERULES_WATCH=0: the edit is picked up
        while client.get("/admin/policy").json()["rules"] != ["renamed"]:
            assert time.monotonic() < deadline, "the file change was not reloaded"
            time.sleep(0.05)


def test_a_bad_variable_is_refused_naming_it(tmp_path):
    for env, named in (({"EDGERULES_PORT": "eighty"}, "EDGERULES_PORT"),
                       ({"EDGERULES_HEADER_TIMEOUT": "soon"}, "EDGERULES_HEADER_TIMEOUT"),
                       ({"EDGERULES_WATCH": "maybe"}, "EDGERULES_WATCH")):
        out = subprocess.run([EDGERULES, "serve"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, **env}, cwd=str(tmp_path))
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith(f"edgerules serve: {named}: "), out.stderr


LIMITED = 'provider demo { format echo }\nrule limited { limit requests 5 per 1m route demo/echo }\n'


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_an_unreachable_state_uri_fails_limited_requests_closed(tmp_path, how):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "p.rules").write_text(LIMITED)
    uri = "redis://127.0.0.1:1"
    args, env = (["--state", uri], {}) if how == "flag" else ([], {"EDGERULES_STATE": uri})
    proc, client = _serve(tmp_path, ["--no-watch", *args], env=env)   # rules/ under the working directory
    with proc, client:
        resp = client.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "limits_unavailable"
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
