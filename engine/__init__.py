"""edgerules: an AI gateway whose behaviour is a policy written in a small rule language."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_policy", "Policy", "PolicyError", "Decision", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `import engine.gateway...` or `engine.upstream` never pays for the compiler.
    if name in ("load_policy", "Policy"):
        from . import policy
        return getattr(policy, name)
    if name == "PolicyError":
        from .errors import PolicyError
        return PolicyError
    if name == "Decision":
        from .decision import Decision
        return Decision
    raise AttributeError(name)
