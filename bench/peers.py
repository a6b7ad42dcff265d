"""The conditions of engine.synth.ten_rule_policy() evaluated by other rule engines, when installed.

Each peer walks the ten rules in order with first-match semantics: a rule whose condition holds
is recorded, and the first such rule that routes or denies ends the walk. A peer answers the
matched rule names, which bench/test_decide_throughput.py checks against the compiled policy's
`matched`. Peers only evaluate conditions (actions cost them nothing), and reading the request
into their variables is part of their time, as it is of the compiled policy's.

Peers: Rust CEL (`common-expression-language`, import `cel`), `cel-python` (import `celpy`) and
`rule-engine` (import `rule_engine`). A missing one raises PeerUnavailable with the reason.
"""
from __future__ import annotations

import importlib
from typing import Callable

from edgerules.lang.schema import estimate_tokens

# (rule name, ends the walk, CEL condition, rule-engine condition)
# Variables: model, stream, temperature (a double; 0.0 when absent), has_temperature, input_tokens,
# x_client, x_plan. A comparison with a missing temperature is false, as in edgerules; CEL has no
# null-safe comparison (cel-python raises on null == 0.0), so has_temperature guards it.
RULES = (
    ("guard_huge_prompt", True, "input_tokens > 8000", "input_tokens > 8000"),
    ("guard_batch_stream", True, 'x_client == "batch" && stream', 'x_client == "batch" and stream'),
    ("tier_free", False, 'x_plan == "free"', 'x_plan == "free"'),
    ("cache_deterministic", False, "has_temperature && temperature == 0.0 && !stream",
     "has_temperature and temperature == 0 and not stream"),
    ("route_0", True, 'model == "model-0"', 'model == "model-0"'),
    ("alias_1", True, 'model in ["model-1", "alias-1"]', 'model in ["model-1", "alias-1"]'),
    ("hot_2", False, 'model == "model-3" && has_temperature && temperature > 1.0',
     'model == "model-3" and has_temperature and temperature > 1'),
    ("slow_3", True, 'model == "model-3"', 'model == "model-3"'),
    ("split_4", True, 'model in ["model-4", "alias-4", "model-4-latest"]',
     'model in ["model-4", "alias-4", "model-4-latest"]'),
    ("catch_all", True, "true", "true"),
)


class PeerUnavailable(Exception):
    """The peer's package is not installed or does not work here; the message says which."""


def variables(body: dict, headers: dict, key: str) -> dict:
    temperature = body.get("temperature")
    return {
        "model": body.get("model") or "",
        "stream": body.get("stream") is True,
        "temperature": 0.0 if temperature is None else float(temperature),
        "has_temperature": temperature is not None,
        "input_tokens": estimate_tokens(body),
        "x_client": headers.get("x-client", ""),
        "x_plan": headers.get("x-plan", ""),
    }


def _walk(tests: list[tuple[str, bool, Callable[[object], bool]]], context) -> list[str]:
    matched = []
    for name, terminal, test in tests:
        if test(context):
            matched.append(name)
            if terminal:
                break
    return matched


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(f"{package} is not installed (pip install {package}): {exc}") from None


def rust_cel(per_execute_dict: bool = False) -> Callable:
    """Rust CEL: one compiled Program per rule. By default the request's variables go into one
    cel.Context per request; with per_execute_dict each execute() converts a dict (the naive use)."""
    cel = _import("cel", "common-expression-language")
    tests = [(name, terminal, cel.compile(src).execute) for name, terminal, src, _ in RULES]

    if per_execute_dict:
        def decide(body, headers, key, path, method, ip, now):
            return _walk(tests, variables(body, headers, key))
    else:
        Context = cel.Context

        def decide(body, headers, key, path, method, ip, now):
            return _walk(tests, Context(variables=variables(body, headers, key)))
    return decide


def cel_python() -> Callable:
    """cel-python: a Lark-based CEL interpreter in pure Python."""
    celpy = _import("celpy", "cel-python")
    env = celpy.Environment()
    tests = [(name, terminal, env.program(env.compile(src)).evaluate) for name, terminal, src, _ in RULES]
    to_cel = celpy.json_to_cel

    def decide(body, headers, key, path, method, ip, now):
        return _walk(tests, {k: to_cel(v) for k, v in variables(body, headers, key).items()})
    return decide


def rule_engine() -> Callable:
    """rule-engine: each condition a Rule, matched against the variables dict."""
    module = _import("rule_engine", "rule-engine")
    tests = [(name, terminal, module.Rule(src).matches) for name, terminal, _, src in RULES]

    def decide(body, headers, key, path, method, ip, now):
        return _walk(tests, variables(body, headers, key))
    return decide


# name shown in reports -> factory
PEERS: dict[str, Callable[[], Callable]] = {
    "Rust CEL": rust_cel,
    "Rust CEL (dict per execute)": lambda: rust_cel(per_execute_dict=True),
    "cel-python": cel_python,
    "rule-engine": rule_engine,
}


def load_peer(name: str) -> Callable:
    """The decision function of one peer; raises PeerUnavailable."""
    try:
        return PEERS[name]()
    except PeerUnavailable:
        raise
    except Exception as exc:  # a peer that imports but fails to build is skipped, not fatal
        raise PeerUnavailable(f"{name} failed to build the rules: {type(exc).__name__}: {exc}") from None
