"""Text -> Lark tree: the grammar, the LALR parser and syntax errors (file:line:col, expected tokens, did-you-mean).

build.py turns the tree into the AST; every other check is check.py's."""
from __future__ import annotations

import difflib
import functools
import hashlib
import math
import os
import sys
from importlib import resources
from pathlib import Path

import lark
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from . import ast
from .build import AstBuilder, parse_duration
from .errors import Diagnostic
from .lalr import FastParser
from .source import Location, Source

GRAMMAR_NAME = "edgerules.lark"
MAX_NESTING = 200   # levels of one file's syntax tree; see _too_deep

_TERMINAL_WORDS = {
    "NAME": "a name", "MODEL": "a model name", "STRING": "a string", "NUMBER": "a number",
    "DURATION": "a duration such as 30s", "STATUS_CLASS": "a status class such as 5xx",
    "COMP_OP": "a comparison", "$END": "the end of the file",
}


def grammar_text() -> str:
    """The grammar file shipped as the `edgerules.grammar` package (grammar/ in a checkout)."""
    return resources.files("edgerules.grammar").joinpath(GRAMMAR_NAME).read_text(encoding="utf-8")


_GRAMMAR_OPTIONS = dict(parser="lalr", lexer="contextual", propagate_positions=True, maybe_placeholders=True)


@functools.cache
def build_parser() -> Lark:
    text = grammar_text()
    cached = _grammar_cache(text)
    if cached is not None:
        try:
            with open(cached, "rb") as f:
                return Lark.load(f)
        except FileNotFoundError:
            pass
        except Exception:   # unreadable or from another Lark: analyse the grammar again, rewrite it
            pass
    parser = Lark(text, **_GRAMMAR_OPTIONS)
    if cached is not None:
        fresh = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        try:
            with open(fresh, "wb") as f:
                parser.save(f)
            os.replace(fresh, cached)   # whole or absent: a process starting beside this one never reads half
        except OSError:
            pass
    return parser


def _grammar_cache(text: str) -> Path | None:
    """Where the analysed grammar is kept between processes (the user's cache directory, private
    to them): analysing it is ~0.12 s of every start, loading it ~0.015 s. The name hashes the
    grammar, the options, Lark's and Python's versions."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgerules"
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = base.stat()
    except (OSError, RuntimeError, KeyError):   # no home, a read-only one: analyse it every time
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o022:   # a pickle is loaded only from the user's own directory
        return None
    key = f"{text}\0{sorted(_GRAMMAR_OPTIONS.items())}\0{lark.__version__}\0{sys.version_info[:2]}"
    key = hashlib.sha256(key.encode()).hexdigest()[:16]
    return base / f"grammar-{key}.lark"


@functools.cache
def fast_parser() -> FastParser | None:
    try:
        return FastParser(build_parser(), MAX_NESTING)
    except (AttributeError, KeyError, TypeError, ValueError):   # a Lark whose internals moved: the general path
        return None


def parse_source(source: Source) -> tuple[ast.Program | None, list[Diagnostic]]:
    """Parse one file. Returns the program, or None and the syntax error."""
    fast = fast_parser()
    program = fast.parse(source.text, source.name) if fast is not None else None
    if program is not None:
        return program, []
    return parse_general(source)


def parse_general(source: Source) -> tuple[ast.Program | None, list[Diagnostic]]:
    """Lark's parse, then AstBuilder over the tree: every syntax diagnostic comes from here."""
    parser = build_parser()
    try:
        tree = parser.parse(source.text)
    except UnexpectedInput as exc:
        return None, [_syntax_diagnostic(exc, source, parser)]
    problems = _too_deep(tree, source.name) or _oversized_numbers(tree, source.name)
    if problems:
        return None, problems
    program = AstBuilder(source.name).transform(tree)
    _release(tree)
    return program, []


def _release(tree: Tree) -> None:
    """Drop a big tree a slice at a time: freeing a 10,000-rule tree in one decref holds the GIL
    for ~60 ms, a stall for the requests a reload thread shares the interpreter with."""
    children = tree.children
    while children:
        del children[-256:]


def _too_deep(tree, file: str) -> list[Diagnostic]:
    """A tree nested more than MAX_NESTING levels (`not not ...`, parentheses alternating `and`
    and `or`, targets inside targets). The checker, the code generator and the interpreter walk
    conditions recursively; this bound keeps them far from Python's recursion limit. Long flat
    chains (`a or b or ...`, 10,000 terms) are one level, not many."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            meta = node.meta
            loc = Location(file, meta.line, meta.column, meta.column + 1) if not meta.empty else None
            return [Diagnostic("too-deep", f"this nests more than {MAX_NESTING} levels deep", loc,
                               hint="split it into simpler conditions or several rules")]
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))
    return []


def _oversized_numbers(tree, file: str) -> list[Diagnostic]:
    """Numbers too large for a float: they would become inf (or exceed int()'s digit limit)."""
    out = []
    tokens = (child for subtree in tree.iter_subtrees() for child in subtree.children
              if isinstance(child, Token) and child.type in ("NUMBER", "DURATION"))
    for token in tokens:
        value = parse_duration(token) if token.type == "DURATION" else float(token.replace("_", ""))
        if not math.isfinite(value):
            end = token.end_column if token.end_line == token.line else token.column + 1
            out.append(Diagnostic("bad-number", "number is too large",
                                  Location(file, token.line, token.column, end)))
    return out


# ---- syntax errors --------------------------------------------------------------------------

def _syntax_diagnostic(exc: UnexpectedInput, source: Source, parser: Lark) -> Diagnostic:
    line, column = max(exc.line, 1) if exc.line != -1 else 1, max(exc.column, 1) if exc.column != -1 else 1
    width, hint = 1, None
    if isinstance(exc, UnexpectedCharacters):
        char = source.text[exc.pos_in_stream] if exc.pos_in_stream < len(source.text) else ""
        if char == '"':
            message = "unterminated string"
        else:
            message = f"unexpected character {char!r}"
    elif isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        token = exc.token
        width = max(1, len(str(token)))
        expected = _acceptable(exc)
        message = f"unexpected {_describe_token(token)}, expected {_describe_expected(expected, parser)}"
        hint = _suggest_keyword(str(token), expected, parser)
    else:
        if isinstance(exc, UnexpectedEOF) or getattr(exc, "token", None) is not None:
            line, column = _end_position(source.text)
        expected = _describe_expected(_acceptable(exc), parser)
        message = f"unexpected end of file, expected {expected}"
    loc = Location(source.name, line, column, column + width)
    return Diagnostic("syntax", message, loc, hint=hint)


def _acceptable(exc: UnexpectedInput) -> set[str]:
    """What the parser could take here. LALR's `expected` also lists terminals that only a
    default reduction would reject (such as ')' after a complete `when` condition); `accepts`
    replays the parser on each one to keep only the real ones."""
    if isinstance(exc, UnexpectedToken) and exc.interactive_parser is not None:
        return set(exc.accepts)
    return set(getattr(exc, "expected", ()) or ())


def _end_position(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    column = len(stripped) - (stripped.rfind("\n") + 1) + 1
    return line, column


def _describe_token(token: Token) -> str:
    if token.type in ("NAME", "MODEL"):
        return f"name '{token}'"
    if token.type == "STRING":
        return f"string {token}"
    return f"'{token}'"


def _terminal_text(name: str, parser: Lark) -> str:
    if name in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[name]
    try:
        pattern = parser.get_terminal(name).pattern
    except KeyError:
        return name.lower()
    return f"'{pattern.value}'" if isinstance(pattern, PatternStr) else name.lower()


def _describe_expected(expected, parser: Lark) -> str:
    words = sorted({_terminal_text(name, parser) for name in expected})
    if not words:
        return "something else"
    if len(words) == 1:
        return words[0]
    if len(words) > 8:
        return "one of " + ", ".join(words[:8]) + ", ..."
    return "one of " + ", ".join(words)


def _suggest_keyword(text: str, expected, parser: Lark) -> str | None:
    keywords = []
    for name in expected:
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            continue
        if isinstance(pattern, PatternStr) and pattern.value.isalpha():
            keywords.append(pattern.value)
    close = difflib.get_close_matches(text, keywords, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
