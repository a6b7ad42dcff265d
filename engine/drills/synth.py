"""Deterministic synthetic policies and requests, for benchmarks and tests.

`synthetic_policy(n)` is n rules: four guards on input_tokens, header(), stream and temperature,
then n - 5 rules keyed on `model` (== or `in`, some with an extra condition, some that only add
limits, tags or settings), then a catch-all route. The model rules are consecutive, so the code
generator dispatches them through one dict: that is the shape a large policy is expected to have.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import orjson

from ..lang import ast
from ..lang.schema import FIELDS, METADATA_HEADER

GUARDS = 4           # rules before the model rules
MIN_RULES = GUARDS + 2  # the guards, at least one model rule, the catch-all

_PROVIDERS = ("p0", "p1", "p2")
_HEADER = """\
# synthetic policy: {n} rules, seed {seed} (engine/synth.py); echo providers, no network.

provider p0 {{ format echo }}
provider p1 {{ format echo }}
provider p2 {{ format echo }}

rule guard_huge_prompt {{
    when input_tokens > 8_000
    deny 413 "prompt is larger than 8k tokens"
}}

rule guard_batch_stream {{
    when header("x-client") == "batch" and stream
    deny 400 "batch clients must not stream"
}}

rule tier_free {{
    when header("x-plan") == "free"
    limit requests 60 per 1m by key
    tag "free"
}}

rule cache_deterministic {{
    when temperature == 0 and not stream
    cache ttl 10m
}}
"""
_CATCH_ALL = """
rule catch_all {
    retry 1 backoff constant 50ms
    route fallback [p0, p2]
}
"""


@dataclass(frozen=True, slots=True)
class _ModelRule:
    text: str
    models: tuple[str, ...]   # the model names its condition tests


def _model_rule(i: int, kind: int, provider: str) -> _ModelRule:
    """Rule i of kind 0-4: route ==, retry+fallback `in`, conditional limit, timeout+route, cache+split."""
    m = f"model-{i}"
    if kind == 0:
        return _ModelRule(
            f'rule route_{i} {{\n    when model == "{m}"\n    route {provider}/{m}\n}}\n', (m,))
    if kind == 1:
        return _ModelRule(
            f'rule alias_{i} {{\n    when model in ["{m}", "alias-{i}"]\n'
            f"    retry 2 backoff constant 100ms\n    route fallback [p0/{m}, p1/{m}]\n}}\n",
            (m, f"alias-{i}"))
    if kind == 2:
        # Adds to the bucket of the next rule's model: a non-terminal rule with a rest condition.
        nxt = f"model-{i + 1}"
        return _ModelRule(
            f'rule hot_{i} {{\n    when model == "{nxt}" and temperature > 1\n'
            f'    limit tokens 20_000 per 1m by key\n    tag "hot"\n}}\n', (nxt,))
    if kind == 3:
        return _ModelRule(
            f'rule slow_{i} {{\n    when model == "{m}"\n    timeout 20s\n    route {provider}/{m}\n}}\n',
            (m,))
    return _ModelRule(
        f'rule split_{i} {{\n    when model in ["{m}", "alias-{i}", "{m}-latest"]\n'
        f"    cache ttl 5m by key\n    route split [80% p0/{m}, 20% {provider}/{m}]\n}}\n",
        (m, f"alias-{i}", f"{m}-latest"))


def _model_rules(n_rules: int, seed: int) -> list[_ModelRule]:
    if n_rules < MIN_RULES:
        raise ValueError(f"a synthetic policy needs at least {MIN_RULES} rules, not {n_rules}")
    rng = random.Random(seed)
    out = []
    for i in range(n_rules - GUARDS - 1):
        # The first five cover every kind; after that mostly plain routes, as real policies are.
        kind = i if i < 5 else rng.choices(range(5), weights=(4, 2, 1, 2, 1))[0]
        out.append(_model_rule(i, kind, _PROVIDERS[i % 3] if i < 5 else rng.choice(_PROVIDERS)))
    return out


def synthetic_policy(n_rules: int, seed: int = 0) -> str:
    """The `.rules` text of a policy of exactly n_rules rules; the same text for the same arguments."""
    body = "\n".join(r.text for r in _model_rules(n_rules, seed))
    return _HEADER.format(n=n_rules, seed=seed) + "\n" + body + _CATCH_ALL


def synthetic_models(n_rules: int, seed: int = 0) -> list[str]:
    """Every model name the conditions of synthetic_policy(n_rules, seed) test, in rule order."""
    return list(dict.fromkeys(m for r in _model_rules(n_rules, seed) for m in r.models))


def ten_rule_policy() -> str:
    """The policy that bench/handwritten.py and bench/peers.py reproduce by hand."""
    return synthetic_policy(10)


Request = tuple[dict, dict, str]   # (body, lower-cased headers, key)

_KEYS = ("", "team-a", "team-b")
_HUGE = "x" * 40_000               # about 10k estimated tokens: over guard_huge_prompt


def synthetic_requests(n: int, seed: int = 0, *, n_rules: int = 10) -> list[Request]:
    """n requests for synthetic_policy(n_rules): models spread over every rule, plus some misses,
    free-plan and batch headers, streams, temperatures and a few huge prompts."""
    rng = random.Random(seed)
    models = synthetic_models(n_rules)
    out = []
    for _ in range(n):
        draw = rng.random()
        model = rng.choice(models) if draw < 0.85 else "unknown-model" if draw < 0.95 else "p1/any"
        text = _HUGE if rng.random() < 0.02 else f"question {rng.randrange(1000)}"
        body: dict = {"model": model, "messages": [{"role": "user", "content": text}]}
        if rng.random() < 0.2:
            body["messages"].insert(0, {"role": "system", "content": "be brief"})
        t = rng.random()
        if t < 0.3:
            body["temperature"] = 0
        elif t < 0.5:
            body["temperature"] = 1.5
        if rng.random() < 0.2:
            body["stream"] = True
        headers = {}
        if rng.random() < 0.25:
            headers["x-plan"] = "free"
        if rng.random() < 0.1:
            headers["x-client"] = "batch"
        out.append((body, headers, rng.choice(_KEYS)))
    return out


# ---- requests for any policy ----------------------------------------------------------------

def policy_requests(policy, n: int = 256, seed: int = 0) -> list[Request]:
    """n requests shaped by a loaded policy: every field its conditions read gets one of the
    literals they compare it with (or a near miss), and models include those it routes to."""
    rng = random.Random(seed)
    pools: dict[tuple, list] = {}
    rule_fields: list[list[tuple]] = []
    for rule in policy.checked.rules:
        keys = []
        if rule.when is not None:
            for field_key, values in _literals(rule.when):
                pools.setdefault(field_key, []).extend(values)
                keys.append(field_key)
        rule_fields.append(keys)
    models = pools.setdefault(("model", None), [])
    models.extend(m for m in policy.models() if not m.endswith("/*"))
    models.append("no-such-model")
    out = []
    for _ in range(n):
        # Aim at one rule: set the fields it reads, and each other field now and then.
        aimed = set(rng.choice(rule_fields)) if rule_fields else set()
        values = {k: rng.choice(pool) for k, pool in pools.items()
                  if pool and (k in aimed or rng.random() < 0.3)}
        out.append(_request(values, rng))
    return out


def _literals(e: ast.Expr):
    """(field key, [values]) for each comparison of a field with a literal or a list."""
    if isinstance(e, (ast.And, ast.Or)):
        for o in e.operands:
            yield from _literals(o)
    elif isinstance(e, ast.Not):
        yield from _literals(e.operand)
    elif isinstance(e, ast.Field) and FIELDS[e.name].type == "bool":
        yield e.key, [True, False]
    elif isinstance(e, ast.Compare) and isinstance(e.left, ast.Field):
        if isinstance(e.right, ast.ListLit):
            yield e.left.key, [i.value for i in e.right.items]
        elif isinstance(e.right, ast.Literal) and e.op != "matches":
            yield e.left.key, _near(e.op, e.right.value)


def _near(op: str, value):
    if isinstance(value, bool):
        return [value, not value]
    if isinstance(value, (int, float)):
        return [value, value + 1, max(0, value - 1)]
    if op == "starts_with":
        return [value + "-x", "x-" + value]
    if op == "ends_with":
        return ["x-" + value, value + "-x"]
    if op == "contains":
        return ["x" + value + "x", ""]
    return [value, value + "-other"] if value else [value, "other"]


def _request(values: dict, rng: random.Random) -> Request:
    body: dict = {"model": "", "messages": [{"role": "user", "content": "hello"}]}
    headers: dict = {}
    metadata: dict = {}
    key = ""
    for (name, arg), value in values.items():
        if name in ("model", "user"):
            body[name] = str(value)
        elif name in ("temperature", "max_tokens"):
            body[name] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else 1
        elif name == "stream":
            body["stream"] = bool(value)
        elif name == "input_tokens":
            body["messages"] = [{"role": "user", "content": "x" * int(max(0, value - 3) * 4)}]
        elif name == "messages":
            body["messages"] = [{"role": "user", "content": "hi"}] * max(0, int(value))
        elif name == "header":
            headers[arg.lower()] = str(value)
        elif name == "metadata":
            metadata[arg] = str(value)
        elif name == "key":
            key = str(value)
    if not body["model"]:
        body["model"] = rng.choice(("no-such-model", "smart"))
    if metadata:
        headers[METADATA_HEADER] = orjson.dumps(metadata).decode()
    return body, headers, key
