"""The fast parse path (engine/lang/lalr.py) builds exactly the AST of Lark's general parse, positions
included, and leaves every file it does not accept to the general parse (so diagnostics stay
those of tests/test_parse.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgerules.drills.synth import synthetic_policy
from edgerules.lang.parse import MAX_NESTING, fast_parser, parse_general, parse_source
from edgerules.lang.source import Source

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted([*(ROOT / "rules").rglob("*.rules"), *(ROOT / "tests" / "golden").rglob("*.rules")])

TRICKY = {
    "keywords as names": 'provider rule { format echo }\nrule key { when model == "input" and header("route") == "x"\n'
                         '  route rule/input }\n',
    "crlf, tabs, comments": 'provider p0 {\r\n\tformat echo # trailing\r\n}\r\n# alone\r\nrule r {\r\n\troute p0\r\n}\r\n',
    "placeholders": 'provider p0 { format echo }\nrule r { deny }\nrule s { when stream limit requests 5 per 1m route p0 }\n',
    "targets": 'provider a { format echo }\nprovider b { format echo }\n'
               'rule r { route split [50% a/m-1, 50% fallback [b/"x y", fastest [a, b]]] by key }\n',
    "lists and nesting": 'provider p { format echo }\nrule r { when not (model in ["a", "b",] or (stream and '
                         'temperature >= 0.5)) and metadata.team.x != "q" retry 2 backoff exponential 10ms max 1s '
                         'jitter on 5xx, 429, timeout route p }\n',
    "empty": "",
    "only a comment": "# nothing\n",
}


def _same(name: str, text: str) -> None:
    general, errors = parse_general(Source(name, text))
    assert not errors, errors
    fast = fast_parser().parse(text, name)
    assert fast is not None, "the fast path refused a file the general parse accepts"
    assert fast == general


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_files_parse_alike(path):
    text = path.read_text()
    if parse_general(Source(str(path), text))[1]:
        pytest.skip("a file with syntax errors (a diagnostics fixture)")
    _same(str(path), text)


@pytest.mark.parametrize("name", TRICKY)
def test_tricky_texts_parse_alike(name):
    _same(name, TRICKY[name])


def test_synthetic_policy_parses_alike():
    _same("synthetic.rules", synthetic_policy(300))


@pytest.mark.parametrize("text", [
    'rule {\n  route demo\n}',                      # a syntax error
    'rule r { route "unterminated }\n',             # a lexer error
    "rule r { when " + "not " * (MAX_NESTING + 5) + "stream route p }",   # too deep
    "rule r { when input_tokens > " + "9" * 400 + " route p }",          # a number that is inf
])
def test_what_the_fast_path_refuses_goes_to_the_general_parse(text):
    assert fast_parser().parse(text, "x.rules") is None
    assert parse_source(Source("x.rules", text)) == parse_general(Source("x.rules", text))
