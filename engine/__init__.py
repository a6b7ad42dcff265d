"""edgerules: an AI gateway whose behaviour is a policy written in a small rule language.

The public API is re-exported here; everything below it is grouped by stage:
`edgerules.lang` (text -> checked, compiled policy), `edgerules.gateway` (serving) and
`edgerules.drills` (fake upstream, load generator, benchmarks).
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_policy", "build_policy", "read_sources", "Policy", "PolicyError", "Diagnostic",
           "Decision", "Source", "__version__"]

_LAZY = {
    "load_policy": "policy", "build_policy": "policy", "read_sources": "policy", "Policy": "policy",
    "PolicyError": "errors", "Diagnostic": "errors", "Decision": "decision", "Source": "source",
}


def __getattr__(name: str):
    # Lazy, so that `import edgerules.gateway...` or the fake upstream never pays for the compiler.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgerules' has no attribute {name!r}")
    from importlib import import_module
    return getattr(import_module(f".lang.{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
