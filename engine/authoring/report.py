"""`edgerules check` reports: text (as the loader renders it), JSON, GitHub annotations; --strict."""
from __future__ import annotations

import json
import sys
from dataclasses import replace

from ..lang.errors import Diagnostic, PolicyError, render_all

_GITHUB = {"error": "error", "warning": "warning", "note": "notice"}


def check_report(path: str, fmt: str = "text", strict: bool = False) -> int:
    """Load the policy, print its diagnostics in the chosen format; 1 on any error."""
    from ..lang.policy import load_policy
    try:
        policy = load_policy(path)
        diagnostics, sources = list(policy.warnings + policy.notes), policy.sources
    except PolicyError as exc:
        policy, diagnostics, sources = None, list(exc.diagnostics), exc.sources
    if strict:
        # Warnings fail the check; notes only explain, and stay notes.
        diagnostics = [replace(d, severity="error") if d.severity == "warning" else d for d in diagnostics]
    diagnostics.sort(key=Diagnostic.sort_key)
    ok = policy is not None and not any(d.severity == "error" for d in diagnostics)
    summary = (f"{path}: ok: {len(policy.files)} file(s), {len(policy.rules)} rule(s), "
               f"{len(policy.providers)} provider(s), {len(policy.keys)} key(s); version {policy.version}"
               if ok else None)
    if fmt == "json":
        print(json.dumps({"path": path, "ok": ok, "version": policy.version if ok else None,
                          "diagnostics": [d.to_dict() for d in diagnostics]}, indent=2))
    elif fmt == "github":
        for d in diagnostics:
            print(github_annotation(d))
        if summary:
            print(summary)
    else:
        if diagnostics:
            print(render_all(diagnostics, sources), file=sys.stderr)
        if summary:
            print(summary)
    return 0 if ok else 1


def github_annotation(d: Diagnostic) -> str:
    """A GitHub Actions workflow command: the diagnostic shows on the file's line in a pull request."""
    where = f" file={d.file},line={d.line},col={d.column}," if d.location else " "
    message = d.message + (f" ({d.hint})" if d.hint else "")
    message = message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return f"::{_GITHUB[d.severity]}{where}title={d.code}::{message}"
