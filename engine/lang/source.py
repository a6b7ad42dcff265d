"""Source files and positions inside them."""
from __future__ import annotations

import dataclasses
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


def pickle_by_init(namespace: dict) -> None:
    """The dataclasses defined in a module (its globals()) pickle as calls of their __init__:
    unpickling a slotted dataclass the default way calls dataclasses' __setstate__, which reads
    fields() for every object (a 10,000-rule policy from the reload helper: ~0.5 s of the serving
    process, half of that this way). Classes whose __init__ does not take every field as is are
    left alone."""
    for cls in list(namespace.values()):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == namespace["__name__"]):
            continue
        fields = dataclasses.fields(cls)
        if hasattr(cls, "__post_init__") or any(not f.init or f.kw_only for f in fields):
            continue
        cls.__reduce__ = _by_init(tuple(f.name for f in fields))


def _by_init(names: tuple[str, ...]):
    def __reduce__(self):
        return type(self), tuple([getattr(self, name) for name in names])
    return __reduce__


pickle_by_init(globals())
