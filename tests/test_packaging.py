"""`edgerules serve` with no arguments, and a wheel that carries its grammar."""
from __future__ import annotations

import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from procs import EDGERULES, start_process

ROOT = Path(__file__).resolve().parent.parent


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_serve_with_no_arguments_answers_from_the_shipped_rules():
    if not _port_free(8080):
        pytest.skip("port 8080 is taken on this machine")
    proc = start_process([EDGERULES, "serve"], "http://127.0.0.1:8080/healthz",
                         cwd=str(ROOT))
    try:
        body = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
        resp = httpx.post("http://127.0.0.1:8080/v1/chat/completions", json=body, trust_env=False)
        assert resp.status_code == 200
        assert resp.json()["choices"][0]["message"]["content"] == "echo: hi"
    finally:
        proc.stop()


def test_wheel_ships_the_grammar(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    if out.returncode != 0 and "No module named" in out.stderr:
        pytest.skip(f"cannot build a wheel here: {out.stderr.strip()[-200:]}")
    assert out.returncode == 0, out.stderr
    wheel = next(tmp_path.glob("edgerules-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgerules/grammar/edgerules.lark" in names
    assert "edgerules/gateway/providers/echo.py" in names


def test_grammar_loads_from_the_package_resources():
    from importlib import resources
    text = resources.files("edgerules.grammar").joinpath("edgerules.lark").read_text()
    from edgerules.lang.parse import grammar_text
    assert text == grammar_text()
