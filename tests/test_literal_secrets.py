"""A secret written literally in a policy never appears in what `check` or a load error prints."""
from __future__ import annotations

import subprocess

from edgerules import PolicyError, Source, build_policy
from procs import EDGERULES

PROVIDER_KEY = "sk-canary-0123456789abcdef0123"
GATEWAY_SECRET = "gw-canary-fedcba9876543210"
POLICY = (f'provider p {{\n    url "http://127.0.0.1:9/v1"\n    api_key "{PROVIDER_KEY}"\n}}\n'
          f'key k {{ secret "{GATEWAY_SECRET}" }}\nrule r {{ route p/m }}\n')


def test_check_warns_about_literal_secrets_without_printing_them(tmp_path):
    path = tmp_path / "p.rules"
    path.write_text(POLICY)
    result = subprocess.run([EDGERULES, "check", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    out = result.stdout + result.stderr
    assert out.count("warning[literal-secret]") == 2
    assert PROVIDER_KEY not in out and GATEWAY_SECRET not in out
    assert f'api_key "{"*" * len(PROVIDER_KEY)}"' in out     # same length: the caret lines up


def test_an_error_on_the_line_of_a_literal_secret_masks_it_too():
    broken = POLICY.replace(f'"{PROVIDER_KEY}"', f'"{PROVIDER_KEY}" oops')
    try:
        build_policy([Source("p.rules", broken)])
    except PolicyError as exc:
        text = str(exc)
    assert "error[syntax]" in text and PROVIDER_KEY not in text
