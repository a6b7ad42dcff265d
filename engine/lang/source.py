"""Source files and positions inside them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int
    column: int
    end_column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Source:
    """One `.rules` file: its display name and its text."""

    name: str
    text: str

    def line_text(self, line: int) -> str:
        # Only "\n" ends a line, as for the parser: splitlines() would also split on form
        # feeds and U+2028 inside comments or strings, and show the wrong line.
        lines = self.text.split("\n")
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""
