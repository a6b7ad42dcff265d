"""Diagnostics, PolicyError, and the caret renderer that prints them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

from .source import Location, Source

MAX_ERRORS = 50
# A secret written literally (`api_key "sk-..."`, `secret "..."`) is shown as stars of the same
# length wherever a diagnostic prints its line, so the caret still lines up.
_LITERAL_SECRET = re.compile(r'\b((?:api_key|secret)\s+")((?:[^"\\]|\\.)*)"')


def mask_secrets(line: str) -> str:
    return _LITERAL_SECRET.sub(lambda m: m.group(1) + "*" * len(m.group(2)) + '"', line)


# The keys of a pool (`api_key [ "sk-...", ... ]`) may sit on lines of their own: every string
# between `api_key [` and its `]` is masked, found in the whole text rather than one line.
_POOL = re.compile(r'\bapi_key\s*\[((?:"(?:[^"\\\n]|\\.)*"|#[^\n]*|[^\]"#])*)\]?')
_STRING = re.compile(r'(env\(\s*)?"((?:[^"\\\n]|\\.)*)"')   # an env("NAME") is no secret


def mask_pool_secrets(source: Source, line: int, text: str) -> str:
    if "api_key" not in source.text:
        return text
    starts = [0] + [i + 1 for i, c in enumerate(source.text) if c == "\n"]
    if not 0 < line <= len(starts):
        return text
    begin = starts[line - 1]
    chars = list(text)
    for pool in _POOL.finditer(source.text):
        for string in _STRING.finditer(source.text, pool.start(1), pool.end(1)):
            if string.group(1):
                continue
            for at in range(max(string.start(2), begin), min(string.end(2), begin + len(chars))):
                chars[at - begin] = "*"
    return "".join(chars)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    message: str
    location: Location | None
    severity: str = "error"
    hint: str | None = None

    @property
    def file(self) -> str | None:
        return self.location.file if self.location else None

    @property
    def line(self) -> int | None:
        return self.location.line if self.location else None

    @property
    def column(self) -> int | None:
        return self.location.column if self.location else None

    def sort_key(self) -> tuple:
        loc = self.location
        return (loc.file, loc.line, loc.column) if loc else ("", 0, 0)

    def render(self, sources: Mapping[str, Source] | None = None) -> str:
        head = f"{self.severity}[{self.code}]: {self.message}"
        loc = self.location
        if loc is None:
            return head
        out = [f"{loc}: {head}"]
        source = (sources or {}).get(loc.file)
        text = mask_pool_secrets(source, loc.line, mask_secrets(source.line_text(loc.line))) if source else ""
        if text:
            width = max(1, (loc.end_column or loc.column + 1) - loc.column)
            gutter = " " * len(str(loc.line))
            out.append(f"  {loc.line} | {text}")
            # Tabs kept as tabs, so the caret lines up however wide the terminal shows them.
            pad = "".join("\t" if c == "\t" else " " for c in text[: loc.column - 1])
            out.append(f"  {gutter} | {pad}{'^' * width}")
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)

    def to_dict(self) -> dict:
        return {
            "code": self.code, "message": self.message, "severity": self.severity,
            "file": self.file, "line": self.line, "column": self.column, "hint": self.hint,
        }


def render_all(diagnostics: Iterable[Diagnostic], sources: Mapping[str, Source] | None = None) -> str:
    """Every diagnostic sorted by position, then a one-line summary."""
    diags = sorted(diagnostics, key=Diagnostic.sort_key)
    errors = sum(d.severity == "error" for d in diags)
    notes = sum(d.severity == "note" for d in diags)
    warnings = len(diags) - errors - notes
    # One broken edit can cascade into hundreds of errors; the first ones are what matters.
    body = [d.render(sources) for d in diags[:MAX_ERRORS]]
    if len(diags) > MAX_ERRORS:
        body.append(f"... and {len(diags) - MAX_ERRORS} more not shown")
    summary = f"{_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
    body.append(summary + (f", {_plural(notes, 'note')}" if notes else ""))
    return "\n".join(body)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class PolicyError(Exception):
    """A policy failed to load; `.diagnostics` holds every error and warning."""

    def __init__(self, diagnostics: Iterable[Diagnostic], sources: Mapping[str, Source] | None = None):
        self.diagnostics = tuple(sorted(diagnostics, key=Diagnostic.sort_key))
        self.sources = dict(sources or {})
        super().__init__(render_all(self.diagnostics, self.sources))

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")
