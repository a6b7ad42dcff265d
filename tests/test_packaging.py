"""`edgerules serve` with no arguments, and the wheel as a user gets it: built, installed in a fresh
venv, imported and run from another directory."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from edgerules import load_policy
from procs import EDGERULES, skip_or_fail_in_ci, start_process

ROOT = Path(__file__).resolve().parent.parent
GRAMMAR = ROOT / "grammar" / "edgerules.lark"
# Nothing of the checkout may leak into the throwaway venv's imports.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_serve_with_no_arguments_answers_from_the_shipped_rules():
    if not _port_free(8080):
        skip_or_fail_in_ci("port 8080 is taken on this machine")
    proc = start_process([EDGERULES, "serve"], "http://127.0.0.1:8080/healthz",
                         cwd=str(ROOT))
    try:
        body = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
        resp = httpx.post("http://127.0.0.1:8080/v1/chat/completions", json=body, trust_env=False)
        assert resp.status_code == 200
        assert resp.json()["choices"][0]["message"]["content"] == "echo: hi"
    finally:
        proc.stop()


def _run(argv: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in argv], cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{argv} exited with {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the working tree, so the build leaves nothing in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".benchmarks",
        ".venv"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", work, source], cwd=work)
    (found,) = work.glob("edgerules-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A throwaway venv with the wheel installed; dependencies come from this Python's site-packages,
    edgerules itself only from the wheel (--no-deps --force-reinstall)."""
    home = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--system-site-packages", home], cwd=home)
    _run([home / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index",
          "--force-reinstall", "--disable-pip-version-check", wheel], cwd=home)
    return home


def test_the_wheel_carries_the_grammar_and_every_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        grammar = archive.read("edgerules/grammar/edgerules.lark").decode("utf-8")
    assert grammar == GRAMMAR.read_text(encoding="utf-8")
    # Every package folder of engine/ ships, under the name it is imported by.
    packages = [p.relative_to(ROOT / "engine").as_posix() for p in (ROOT / "engine").rglob("__init__.py")]
    assert packages and {f"edgerules/{p}" for p in packages} <= names


def test_the_installed_wheel_loads_a_policy_from_another_directory(venv, tmp_path):
    rules = (ROOT / "rules").resolve()
    code = ("import edgerules, sys; print(edgerules.__file__); "
            f"print(edgerules.load_policy({str(rules)!r}).version)")
    out = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path)
    where, version = out.stdout.split()
    assert Path(where).resolve().is_relative_to(venv.resolve()), f"edgerules was imported from {where}"
    assert version == load_policy(str(rules)).version


def test_the_installed_grammar_is_the_repository_grammar(venv, tmp_path):
    code = ("from importlib import resources; import sys; "
            "sys.stdout.write(resources.files('edgerules.grammar').joinpath('edgerules.lark').read_text())")
    out = _run([venv / "bin" / "python", "-c", code], cwd=tmp_path)
    assert out.stdout == GRAMMAR.read_text(encoding="utf-8")


def test_the_installed_console_script_checks_a_policy(venv, tmp_path):
    script = venv / "bin" / "edgerules"
    assert script.is_file()
    out = _run([script, "check", (ROOT / "rules").resolve()], cwd=tmp_path)
    assert "error" not in out.stdout.lower()
    broken = tmp_path / "broken.rules"
    broken.write_text('rule r { when modle == "x" deny 403 "no" }\n')
    failed = subprocess.run([str(script), "check", str(broken)], cwd=tmp_path, env=CLEAN_ENV,
                            capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "error[unknown-field]" in failed.stdout + failed.stderr
