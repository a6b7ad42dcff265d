"""An empty policy loads (it is valid) but `check` warns about it."""
from __future__ import annotations

import subprocess

import pytest

from procs import EDGERULES


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_check_warns_about_an_empty_policy(tmp_path, text):
    path = tmp_path / "p.rules"
    path.write_text(text)
    result = subprocess.run([EDGERULES, "check", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "warning[empty-policy]: the policy is empty" in result.stderr


def test_a_policy_with_only_providers_is_not_empty(tmp_path):
    path = tmp_path / "p.rules"
    path.write_text("provider demo { format echo }\n")
    result = subprocess.run([EDGERULES, "check", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "empty-policy" not in result.stderr
