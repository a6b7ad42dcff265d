"""Every `edgerules ...` command shown in README.md and docs/*.md works as written, through the
installed console script.

Command blocks are fenced blocks tagged sh/bash/shell, and lines starting with `$ ` in any block.
Each command line runs in a shell from the repository's root. `edgerules serve` runs as a server
(on a free port given by EDGERULES_PORT, which the command leaves to the environment) and the curl
examples are sent to it with the documented port replaced by that one. Two commands are not run:
`pip install` (it would change the environment other tests run in; tests/test_packaging.py
installs the wheel in a throwaway venv) and the test suite itself. Synopsis lines (with `[...]`
or placeholders such as PATH) cannot run as written: their sub-command and every flag they name
must be known to `edgerules SUB --help`. A documented output is compared with the real one.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from procs import EDGERULES, free_port, start_process

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_TAGS = {"sh", "bash", "shell", "console"}
NOT_RUN = ("pip install", "python3 -m pytest", "python -m pytest")
PLACEHOLDER = re.compile(r"\[|\b[A-Z]{2,}\b")
DOCUMENTED_PORT = re.compile(r"(localhost|127\.0\.0\.1):8080")
ENV = {**os.environ, "PATH": os.path.dirname(EDGERULES) + os.pathsep + os.environ.get("PATH", "")}


def _blocks(path: Path):
    """(tag, lines) of each fenced block."""
    tag, lines = None, None
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if lines is None:
                tag, lines = line[3:].strip(), []
            else:
                yield tag, lines
                lines = None
        elif lines is not None:
            lines.append(line)


def _commands(lines: list[str], tagged: bool):
    """Command lines (continuations joined), each with the output documented under it."""
    commands, pending = [], ""
    for line in lines:
        if pending:
            pending += " " + line.strip()
        elif line.startswith("$ "):
            pending = line[2:]
        elif tagged and line.strip() and not line.lstrip().startswith("#"):
            pending = line
        else:
            if commands:
                commands[-1][1].append(line)
            continue
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        commands.append((pending, []))
        pending = ""
    return commands


def documented_commands():
    found = []
    for path in DOCS:
        for tag, lines in _blocks(path):
            if lines and lines[0].startswith("edgerules "):    # a synopsis, wrapped over lines
                command = " ".join(line.strip() for line in lines)
                found.append(pytest.param(command, [], id=f"{path.name}: {command[:60]}"))
                continue
            tagged = tag in SHELL_TAGS
            if tagged or any(line.startswith("$ ") for line in lines):
                for command, output in _commands(lines, tagged):
                    found.append(pytest.param(command, output, id=f"{path.name}: {command[:60]}"))
    for path in DOCS:    # synopsis lines outside blocks: README's command table
        for match in re.finditer(r"^\| `(edgerules [^`]+)`", path.read_text(), re.M):
            found.append(pytest.param(match.group(1).replace("\\|", "|"), [], id=f"{path.name} table: {match.group(1)[:50]}"))
    return found


def _without_comment(command: str) -> str:
    # A trailing `# ...` outside quotes is a comment; quoting in these examples is simple.
    quoted = None
    for i, char in enumerate(command):
        if char in "'\"" and quoted in (None, char):
            quoted = None if quoted else char
        elif char == "#" and quoted is None and (i == 0 or command[i - 1] == " "):
            return command[:i].rstrip()
    return command


@pytest.fixture(scope="module")
def gateway():
    """`edgerules serve` as README shows it, from the repository's root, on a free port."""
    port = free_port()
    proc = start_process([EDGERULES, "serve"], f"http://127.0.0.1:{port}/healthz", timeout=30,
                         env={"EDGERULES_PORT": str(port)}, cwd=str(ROOT))
    yield port
    proc.stop()


def run(command: str, port: int | None = None) -> subprocess.CompletedProcess:
    if port is not None:
        command = DOCUMENTED_PORT.sub(f"127.0.0.1:{port}", command)
    return subprocess.run(["bash", "-c", "set -o pipefail; " + command], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL)


def check_synopsis(command: str) -> None:
    words = command.split()
    sub = words[1]
    help_text = run(f"edgerules {sub} --help")
    assert help_text.returncode == 0, help_text.stderr
    for flag in re.findall(r"--[a-z][a-z-]*", command):
        assert flag in help_text.stdout, f"`{command}` names {flag}, which `edgerules {sub}` does not take"


def test_the_docs_show_commands():
    commands = [p.values[0] for p in documented_commands()]
    assert any(c.startswith("curl") for c in commands)
    assert sum("edgerules " in c for c in commands) >= 8


def _runnable_parts(command: str) -> list[str]:
    parts = [part.strip() for part in _without_comment(command).split("&&")]
    return [part for part in parts if not part.startswith(NOT_RUN)]


def test_only_installing_and_the_suite_are_left_out():
    left_out = [p.values[0] for p in documented_commands() if not _runnable_parts(p.values[0])]
    assert left_out == ["pip install -e '.[test,bench]' && python3 -m pytest tests bench --benchmark-disable"]


@pytest.mark.parametrize("command, documented_output",
                         [p for p in documented_commands() if _runnable_parts(p.values[0])])
def test_documented_command_works_as_written(command, documented_output, gateway):
    command = " && ".join(_runnable_parts(command))
    if "edgerules " in command and PLACEHOLDER.search(command[command.index("edgerules ") + 10:]):
        check_synopsis(command[command.index("edgerules"):])
        return
    if command == "edgerules serve":
        return    # the gateway fixture is exactly this command, and it answers /healthz
    out = run(command, gateway)
    assert out.returncode == 0, f"`{command}` exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    if command.startswith("curl"):
        answer = json.loads(out.stdout)
        assert answer["object"] == "chat.completion", answer
    text = "\n".join(line for line in documented_output if line.strip())
    if text.startswith("{"):
        assert json.loads(out.stdout) == json.loads(text)
