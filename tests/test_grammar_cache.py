"""parse.py keeps the analysed grammar in the user's cache directory: a later start loads it, a
damaged file is analysed again and rewritten, a directory others can write is not used."""
from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = ("import sys; from edgerules.lang.parse import parse_source, build_parser; "
          "from edgerules.lang.source import Source; "
          "p, e = parse_source(Source('t.rules', 'rule r {\\n  when model == \"a\"\\n  deny 403\\n}\\n')); "
          "assert p is not None and not e; "
          "p, e = parse_source(Source('t.rules', 'rule r { whn model }')); "
          "print(e[0].code, e[0].message)")


def run(cache) -> str:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_grammar_is_kept_reused_and_rebuilt_when_damaged(tmp_path):
    first = run(tmp_path)
    (cached,) = (tmp_path / "edgerules").glob("grammar-*.lark")
    assert oct((tmp_path / "edgerules").stat().st_mode & 0o777) == oct(0o700)
    stamp = cached.stat().st_mtime_ns
    assert run(tmp_path) == first and cached.stat().st_mtime_ns == stamp   # loaded, not rewritten
    cached.write_bytes(b"not a pickle")
    assert run(tmp_path) == first and cached.read_bytes() != b"not a pickle"
    assert first.startswith("syntax ")


def test_a_directory_others_can_write_is_not_used(tmp_path):
    shared = tmp_path / "edgerules"
    shared.mkdir()
    shared.chmod(0o777)
    run(tmp_path)
    assert list(shared.iterdir()) == []
