"""`edgerules fmt`: one canonical layout for .rules files, comments kept, meaning unchanged.

The layout: a statement's header (`rule NAME {`) on its own line, then one setting, condition or
action a line, indented four spaces, then `}`; one space between tokens except inside
`a/b`, `x.y`, `f("x")`, `80%`, `[...]`, `(...)` and before commas; one blank line between
statements, and at most one wherever the source had blank lines; trailing comments of
consecutive lines aligned two spaces after the longest line; integers of five digits or more
grouped by `_` thousands (fewer digits are not grouped), no leading zeros, decimals as written;
durations and strings as written; a key pool of two or more keys one key a line between
`api_key [` and `]`. Formatting works on the tokens the parser reads, so it can
change whitespace, comments' columns, number spelling and a trailing comma, nothing else.
"""
from __future__ import annotations

import difflib
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from ..lang.errors import Diagnostic, PolicyError, render_all
from ..lang.parse import _syntax_diagnostic, grammar_text
from ..lang.policy import read_sources
from ..lang.source import Source

INDENT = "    "
_NO_SPACE_AFTER = {"(", "[", "/", "."}
_NO_SPACE_BEFORE = {")", "]", ",", "/", "%", "."}


@functools.cache
def _parser() -> Lark:
    return Lark(grammar_text(), parser="lalr", lexer="contextual", propagate_positions=True,
                keep_all_tokens=True)


@dataclass
class _Line:
    indent: int
    tokens: list[Token]
    first: int                       # source line of its first token
    last: int                        # source line of its last token
    statement_end: bool = False      # the `}` closing a top-level statement
    comments: list[str] = field(default_factory=list)   # trailing comments
    leading: list[tuple[int, str]] = field(default_factory=list)  # (source line, text) above it


def format_source(source: Source) -> str:
    """The canonical text of one file. Raises PolicyError on a syntax error."""
    parser = _parser()
    try:
        tree = parser.parse(source.text)
    except UnexpectedInput as exc:
        raise PolicyError([_syntax_diagnostic(exc, source, parser)], {source.name: source}) from None
    lines: list[_Line] = []
    for statement in tree.children:
        _statement(statement, lines)
    tail = _place_comments(lines, _comments(source.text))
    return _render(lines, tail)


# ---- tree -> lines ----------------------------------------------------------------------------

def _tokens(node) -> list[Token]:
    if isinstance(node, Token):
        return [node]
    return [t for child in node.children if child is not None for t in _tokens(child)]


def _line(indent: int, tokens: list[Token]) -> _Line:
    return _Line(indent, tokens, tokens[0].line, tokens[-1].end_line)


def _statement(node: Tree, lines: list[_Line]) -> None:
    children = node.children
    if not any(isinstance(c, Token) and c == "{" for c in children):   # `retry budget 20%`: one line
        line = _line(0, _tokens(node))
        line.statement_end = True
        lines.append(line)
        return
    # provider NAME { ... } | key NAME { ... } | rule NAME [for tools] { [when] actions }
    brace = next(i for i, c in enumerate(children) if isinstance(c, Token) and c == "{")
    lines.append(_line(0, [t for c in children[:brace + 1] if c is not None for t in _tokens(c)]))
    for child in children[brace + 1:-1]:
        if isinstance(child, Tree) and child.data == "api_key_pool":
            _key_pool(child, lines)
        elif child is not None:    # a rule without `when`
            lines.append(_line(1, _tokens(child)))
    end = _line(0, _tokens(children[-1]))
    end.statement_end = True
    lines.append(end)


def _key_pool(node: Tree, lines: list[_Line]) -> None:
    """`api_key [` alone, then one key a line with its comma, then `]` and any `pick`."""
    keys = [c for c in node.children if isinstance(c, Tree)]
    if len(keys) < 2:
        lines.append(_line(1, _tokens(node)))
        return
    close = next(i for i, c in enumerate(node.children) if isinstance(c, Token) and c == "]")
    lines.append(_line(1, _tokens(node)[:2]))
    for key in keys:
        tokens = _tokens(key)
        lines.append(_line(2, tokens + [Token.new_borrow_pos("COMMA", ",", tokens[-1])]))
    lines.append(_line(1, [t for c in node.children[close:] if c is not None for t in _tokens(c)]))


# ---- comments -------------------------------------------------------------------------------

def _comments(text: str) -> list[tuple[int, int, str]]:
    """(line, column, text) of every comment: a `#` outside a string, to the end of its line."""
    out, line, column, in_string, i = [], 1, 1, False, 0
    while i < len(text):
        ch = text[i]
        if ch == "\n":
            line, column, in_string = line + 1, 1, False
            i += 1
            continue
        if in_string:
            if ch == "\\" and i + 1 < len(text) and text[i + 1] != "\n":
                i, column = i + 2, column + 2
                continue
            in_string = ch != '"'
        elif ch == '"':
            in_string = True
        elif ch == "#":
            end = text.find("\n", i)
            end = len(text) if end == -1 else end
            out.append((line, column, text[i:end].rstrip()))
            i = end
            continue
        i, column = i + 1, column + 1
    return out


def _place_comments(lines: list[_Line], comments) -> list[tuple[int, str]]:
    """Attach each comment to a line: a comment after code on its line trails the output line
    holding that code; a comment alone on its line leads the next line. Returns those after
    the last line."""
    tail = []
    # The output line holding the last token before each comment, when on the comment's line.
    spots = [(t.line, t.column, index) for index, ln in enumerate(lines) for t in ln.tokens]
    spots.sort()
    import bisect
    for line, column, text in comments:
        at = bisect.bisect_left(spots, (line, column, -1)) - 1
        if at >= 0 and spots[at][0] == line:
            lines[spots[at][2]].comments.append(text)
            continue
        after = bisect.bisect_left(spots, (line, column, -1))
        if after < len(spots):
            lines[spots[after][2]].leading.append((line, text))
        else:
            tail.append((line, text))
    return tail


# ---- lines -> text --------------------------------------------------------------------------

def _token_text(token: Token) -> str:
    return _number(str(token)) if token.type == "NUMBER" else str(token)


def _number(text: str) -> str:
    sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, dot, fraction = digits.replace("_", "").partition(".")
    whole = whole.lstrip("0") or "0"
    if len(whole) >= 5:
        head = len(whole) % 3 or 3
        whole = "_".join([whole[:head]] + [whole[i:i + 3] for i in range(head, len(whole), 3)])
    return sign + whole + (dot + fraction if dot else "")


def _join(tokens: list[Token]) -> str:
    out: list[str] = []
    previous = None
    for i, token in enumerate(tokens):
        text = _token_text(token)
        if text == "," and i + 1 < len(tokens) and str(tokens[i + 1]) == "]":
            continue    # a trailing comma in a list
        if previous is not None:
            glued = (str(previous) in _NO_SPACE_AFTER or text in _NO_SPACE_BEFORE
                     or (text == "(" and (previous.type == "NAME" or str(previous) == "env")))
            if not glued:
                out.append(" ")
        out.append(text)
        previous = token
    return "".join(out)


def _render(lines: list[_Line], tail: list[tuple[int, str]]) -> str:
    rows: list[tuple[str, str | None, int, int]] = []   # (code, trailing comment, first, last)
    blank_after_statement = False
    previous_last = None

    def gap(first: int) -> None:
        nonlocal blank_after_statement
        if rows and (blank_after_statement or (previous_last is not None and first - previous_last >= 2)):
            rows.append(("", None, 0, 0))
        blank_after_statement = False

    for ln in lines:
        pad = INDENT * ln.indent
        for source_line, text in ln.leading:
            gap(source_line)
            rows.append((pad + text, None, source_line, source_line))
            previous_last = source_line
        gap(ln.first)
        rows.append((pad + _join(ln.tokens), " ".join(ln.comments) or None, ln.first, ln.last))
        previous_last = ln.last
        blank_after_statement = ln.statement_end
    for source_line, text in tail:
        gap(source_line)
        rows.append((text, None, source_line, source_line))
        previous_last = source_line
    return _align(rows)


def _align(rows) -> str:
    """Trailing comments of consecutive lines start in one column, two spaces after the longest."""
    out, i = [], 0
    while i < len(rows):
        if rows[i][1] is None:
            out.append(rows[i][0].rstrip())
            i += 1
            continue
        j = i
        while j < len(rows) and rows[j][1] is not None:
            j += 1
        width = max(len(code) for code, *_ in rows[i:j]) + 2
        out.extend(f"{code.ljust(width)}{comment}" for code, comment, *_ in rows[i:j])
        i = j
    text = "\n".join(out).strip("\n")
    return text + "\n" if text else ""


# ---- the command ----------------------------------------------------------------------------

def run_fmt(path: str, check: bool = False, diff: bool = False) -> int:
    """Format every policy file under path in place (or, with check/diff, only report)."""
    try:
        sources = read_sources(path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    errors: list[Diagnostic] = []
    changed = []
    for source in sources:
        try:
            formatted = format_source(source)
        except PolicyError as exc:
            errors.extend(exc.diagnostics)
            continue
        if formatted == source.text:
            continue
        changed.append(source.name)
        if diff:
            sys.stdout.writelines(difflib.unified_diff(
                source.text.splitlines(keepends=True), formatted.splitlines(keepends=True),
                f"{source.name} (as written)", f"{source.name} (formatted)"))
        elif not check:
            Path(source.name).write_text(formatted, encoding="utf-8")
    if errors:
        print(render_all(errors, {s.name: s for s in sources}), file=sys.stderr)
    for name in changed:
        verb = "would reformat" if check or diff else "reformatted"
        print(f"{verb} {name}", file=sys.stderr)
    if not changed and not errors:
        print(f"{len(sources)} file(s) already formatted", file=sys.stderr)
    return 1 if errors or (check and changed) else 0
