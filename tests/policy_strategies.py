"""Hypothesis strategies for well-formed policies (as rule-language text) and for requests.

Policies draw from small pools of values so that random requests often match their rules;
every policy these strategies produce must load without errors (warnings are fine). Strategy
factories are cached: hypothesis validates a strategy object once, not at every draw.
"""
from __future__ import annotations

import functools
import json
import random

from edgerules.lang.codegen import DISPATCH_MIN
from hypothesis import strategies as st

PROVIDERS = ("openai", "anthropic", "local", "demo")
PROVIDER_DECLS = """
provider openai {
    url "https://api.openai.com/v1"
    api_key env("OPENAI_API_KEY")
    timeout 30s
    cooldown 30s after 3 failures
    price gpt-4o input 2.50 output 10.00
    price "o1:2024" input 15 output 60
}
provider anthropic { format anthropic  api_key env("ANTHROPIC_API_KEY") }
provider local { url "http://127.0.0.1:11434/v1" }
provider demo { format echo  price echo input 0.15 output 0.60 }
"""
ENV = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"}

STRINGS = ("", "a", "b", "c", "smart", "free", "pro", "eu", "gpt-4o", "gpt-4o-mini",
           "openai/gpt-4o", "demo/echo", "anthropic/claude", "x-y", 'q"uote', "back\\slash",
           "tab\there", "é", "POST", "/v1/chat/completions", "10.0.0.1", "team-a")
MODELS = ("a", "b", "c", "smart", "gpt-4o", "gpt-4o-mini", "openai/gpt-4o", "demo/echo",
          "anthropic/claude", "local/llama3", "nobody/x", "openai/", "/x", "")
NUMBERS = (0, 1, 2, 3, 5, 7, 12, 23, 100, 0.5, 0.7, 1.5, -1, 1_000)
# Safe patterns, written as they appear between the quotes of a rules file. "\d" is an
# unknown string escape, kept as written, so it reaches RE2 as \d.
REGEXES = ("^a", "b$", "^gpt-[0-9]+", "o", "^(a|b)$", r"\d", r"\\d", "[a-z]+-[a-z]+",
           ".*", "^$", "(?i)^SMART", r"\.", "^[^/]+/[^/]+$")
HEADERS = ("x-plan", "x-client", "x-debug", "x-tenant")
META = ("region", "team", "tier")

STRING_FIELDS = ("model", "user", "key", "path", "method", "ip", "response_format")
BODY_PATHS = ("reasoning_effort", "metadata.team", "metadata.tier.level", "n", "parallel_tool_calls")
TOOL_NAMES = ("shell", "search", "read_file", "")
NETWORKS = ("10.0.0.0/8", "127.0.0.1", "::1/128", "192.168.0.0/16", "2001:db8::/32", "10.0.0.1")
NUMBER_FIELDS = ("temperature", "max_tokens", "input_tokens", "messages", "hour", "weekday")
DURATIONS = ("1s", "2s", "30s", "1m", "90s", "1h", "1d", "1_000ms", "1.5m")
SHORT_DURATIONS = ("100ms", "250ms", "1s", "2s", "5s", "0.5s")


def quote(text: str) -> str:
    """A rules-language string literal for text."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def number_text(value) -> str:
    if value == 1_000 and isinstance(value, int):
        return "1_000"
    return str(value)


# ---- expressions ----------------------------------------------------------------------------

@functools.cache
def string_fields():
    return st.one_of(
        st.sampled_from(STRING_FIELDS),
        st.sampled_from(HEADERS).flatmap(
            lambda h: st.sampled_from((h, h.upper(), h.title())).map(lambda n: f'header("{n}")')),
        st.sampled_from(META).map(lambda m: f"metadata.{m}"),
    )


@functools.cache
def string_conditions():
    field = string_fields()
    lit = st.sampled_from(STRINGS).map(quote)
    return st.one_of(
        st.tuples(field, st.sampled_from(("==", "!=")), lit).map(" ".join),
        st.tuples(lit, st.sampled_from(("==", "!=")), field).map(" ".join),
        st.tuples(field, st.sampled_from(("==", "!=")), field).map(" ".join),
        # ip in [...] with a "/" among the values is a network test: only addresses and networks
        st.tuples(field.filter(lambda f: f != "ip"), st.sampled_from(("in", "not in")),
                  st.lists(lit, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")).map(" ".join),
        st.tuples(st.sampled_from(("in", "not in")),
                  st.lists(st.sampled_from(NETWORKS).map(quote), max_size=4)).map(
            lambda t: f"ip {t[0]} [{', '.join(t[1])}]"),
        st.tuples(st.sampled_from(TOOL_NAMES).map(quote), st.sampled_from(("in", "not in"))).map(
            lambda t: f"{t[0]} {t[1]} tools"),
        st.tuples(st.sampled_from(BODY_PATHS), st.sampled_from(("==", "!=")), lit).map(
            lambda t: f"body.{t[0]} {t[1]} {t[2]}"),
        st.tuples(st.sampled_from(BODY_PATHS), st.sampled_from(("in", "not in")),
                  st.lists(lit, max_size=3)).map(lambda t: f"body.{t[0]} {t[1]} [{', '.join(t[2])}]"),
        st.tuples(field, st.sampled_from(REGEXES)).map(lambda t: f'{t[0]} matches "{t[1]}"'),
        st.tuples(field, st.sampled_from(("contains", "starts_with", "ends_with")),
                  st.one_of(lit, field)).map(" ".join),
    )


@functools.cache
def number_conditions():
    field = st.sampled_from(NUMBER_FIELDS)
    lit = st.sampled_from(NUMBERS).map(number_text)
    ops = st.sampled_from(("==", "!=", "<", "<=", ">", ">="))
    return st.one_of(
        st.tuples(field, ops, lit).map(" ".join),
        st.tuples(lit, ops, field).map(" ".join),
        st.tuples(field, ops, field).map(" ".join),
        st.tuples(st.sampled_from(BODY_PATHS), ops, lit).map(lambda t: f"body.{t[0]} {t[1]} {t[2]}"),
        st.tuples(field, st.sampled_from(("in", "not in")),
                  st.lists(lit, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]")).map(" ".join),
    )


@functools.cache
def bool_conditions():
    return st.sampled_from((
        "stream", "not stream", "stream == true", "stream != false", "false == stream",
        "forces_tool", "not forces_tool", "body.parallel_tool_calls == true", "body.stream != false",
        "stream in [true]", "stream not in [false, true]", "true", "false",
        "1s < 2s", '"a" == "a"', "100ms == 0.1s",
    ))


@functools.cache
def conditions(max_depth: int = 3):
    leaf = st.one_of(string_conditions(), number_conditions(), bool_conditions())
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.tuples(inner, inner).map(lambda t: f"{t[0]} and {t[1]}"),
            st.tuples(inner, inner).map(lambda t: f"({t[0]}) or ({t[1]})"),
            st.tuples(inner, inner).map(lambda t: f"{t[0]} or {t[1]}"),
            inner.map(lambda e: f"not ({e})"),
            inner.map(lambda e: f"({e})"),
        ),
        max_leaves=6,
    )


@functools.cache
def by_values():
    value = st.one_of(string_fields(), st.sampled_from(NUMBER_FIELDS), st.just("stream"),
                      number_conditions(), string_conditions())
    return st.lists(value, min_size=1, max_size=3).map(lambda xs: "by " + ", ".join(xs))


# ---- targets --------------------------------------------------------------------------------

@functools.cache
def single_targets():
    model = st.sampled_from(("gpt-4o", "gpt-4o-mini", "echo", "llama3", "claude-sonnet-4", "m.1"))
    return st.one_of(
        st.tuples(st.sampled_from(PROVIDERS), model).map(lambda t: f"{t[0]}/{t[1]}"),
        st.sampled_from(PROVIDERS),
        st.tuples(st.sampled_from(PROVIDERS), st.sampled_from(("llama3:8b", "o1:2024", "a b")))
        .map(lambda t: quote(f"{t[0]}/{t[1]}")),
        st.sampled_from(PROVIDERS).map(quote),
    )


@functools.cache
def _weights(n: int):
    return st.lists(st.integers(1, 97), min_size=n - 1, max_size=n - 1).filter(
        lambda ws: sum(ws) < 100).map(lambda ws: ws + [100 - sum(ws)])


def _split(members, by=st.just("")):
    weighted = members.flatmap(lambda ms: st.tuples(st.just(ms), _weights(len(ms)) if len(ms) > 1
                                                    else st.just([100])))
    return st.tuples(weighted, by).map(
        lambda t: ("split [" + ", ".join(f"{w}% {m}" for m, w in zip(*t[0])) + "] " + t[1]).rstrip())


@functools.cache
def targets(sticky: bool = True):
    """Targets of every shape. Only a top-level split is sticky: inside a list, `by a, b`
    would swallow the list's next member."""
    def extend(inner):
        members = st.lists(inner, min_size=1, max_size=3)
        return st.one_of(
            members.map(lambda ms: "fallback [" + ", ".join(ms) + "]"),
            members.map(lambda ms: "fastest [" + ", ".join(ms) + "]"),
            st.tuples(st.lists(inner, min_size=2, max_size=3), st.sampled_from(["250ms", "0ms", "p95"])).map(
                lambda t: "hedge [" + ", ".join(t[0]) + "] after " + t[1]),
            _split(members),
        )
    tree = st.recursive(single_targets(), extend, max_leaves=5)
    if not sticky:
        return tree
    return st.one_of(tree, _split(st.lists(tree, min_size=1, max_size=3), by_values()))


# ---- actions and rules ----------------------------------------------------------------------

@functools.cache
def limits():
    amount = st.one_of(st.integers(1, 100_000).map(str), st.just("100_000"))
    return st.tuples(
        st.sampled_from(("requests", "tokens", "cost")), amount, st.sampled_from(DURATIONS),
        st.one_of(st.just(""), by_values()),
        st.one_of(st.just(""), targets(sticky=False).map(lambda t: "else route " + t)),
    ).map(lambda t: " ".join(x for x in ("limit", t[0], t[1], "per", *t[2:]) if x))


@functools.cache
def retries():
    backoff = st.tuples(st.sampled_from(("constant", "linear", "exponential")),
                        st.sampled_from(SHORT_DURATIONS)).map(lambda t: f"backoff {t[0]} {t[1]}")
    codes = st.lists(st.sampled_from(("429", "503", "5xx", "4xx", "timeout", "connect")),
                     min_size=1, max_size=4).map(lambda cs: "on " + ", ".join(cs))
    option = st.one_of(backoff, st.sampled_from(SHORT_DURATIONS).map(lambda d: f"max {d}"),
                       st.just("jitter"), codes)
    # Each option at most once (a repeated one is a `duplicate-option` error), in any order.
    return st.tuples(st.integers(1, 5), st.lists(option, max_size=3, unique_by=lambda o: o.split()[0])).map(
        lambda t: " ".join([f"retry {t[0]}", *t[1]]))


@functools.cache
def settings_actions():
    return st.one_of(
        limits(),
        st.tuples(st.sampled_from(DURATIONS), st.one_of(st.just(""), by_values())).map(
            lambda t: f"cache ttl {t[0]} {t[1]}".rstrip()),
        st.just("cache off"),
        retries(),
        st.sampled_from(SHORT_DURATIONS + DURATIONS).map(lambda d: f"timeout {d}"),
        st.sampled_from(DURATIONS).map(lambda d: f"deadline {d}"),
        st.sampled_from(STRINGS).map(lambda s: f"tag {quote(s)}"),
        st.sampled_from(("none", "meta", "full")).map(lambda lv: f"log {lv}"),
    )


@functools.cache
def terminal_actions():
    status = st.sampled_from((400, 401, 403, 404, 413, 429, 451, 500, 503, 599))
    return st.one_of(
        st.tuples(status, st.one_of(st.just(""), st.sampled_from(STRINGS).map(quote))).map(
            lambda t: f"deny {t[0]} {t[1]}".rstrip()),
        targets().map(lambda t: f"route {t}"),
    )


@functools.cache
def rule_bodies():
    """A list of actions: settings, then at most one terminal action at the end."""
    return st.tuples(st.lists(settings_actions(), max_size=3),
                     st.one_of(st.none(), terminal_actions())).filter(
        lambda t: t[0] or t[1]).map(lambda t: t[0] + ([t[1]] if t[1] else []))


@functools.cache
def dispatch_conditions(field: str, values):
    """`field == v` or `field in [...]`, optionally `and` a further condition."""
    lit = st.sampled_from(values)
    head = st.one_of(
        lit.map(lambda v: f"{field} == {v}"),
        st.lists(lit, min_size=1, max_size=3).map(lambda vs: f"{field} in [{', '.join(vs)}]"),
    )
    return st.tuples(head, st.one_of(st.just(""), conditions())).map(
        lambda t: f"{t[0]} and {t[1]}" if t[1] else t[0])


DISPATCH_FIELDS = (
    ("model", tuple(quote(m) for m in MODELS)),
    ('header("X-Plan")', tuple(quote(s) for s in ("free", "pro", "", "team-a"))),
    ("metadata.region", tuple(quote(s) for s in ("eu", "us", "", '{"a":1}', "1"))),
    ("hour", tuple(str(h) for h in (0, 1, 2, 3, 12, 23))),
    ("temperature", ("0", "0.5", "1", "0.7")),
    ("stream", ("true", "false")),
)


@st.composite
def rule_groups(draw):
    """Rule conditions and bodies: single random rules, or a run on one field for the dispatch index."""
    if draw(st.integers(0, 2)) == 0:
        field, values = draw(st.sampled_from(DISPATCH_FIELDS))
        n = draw(st.integers(3, DISPATCH_MIN + 4))   # either side of the dispatch threshold
        return [(draw(dispatch_conditions(field, values)), draw(rule_bodies())) for _ in range(n)]
    # Mostly conditional: an unconditional rule that routes or denies ends every walk.
    when = None if draw(st.integers(0, 5)) == 0 else draw(conditions())
    return [(when, draw(rule_bodies()))]


@st.composite
def policies(draw, max_groups: int = 8) -> str:
    """The text of a well-formed policy: the providers of PROVIDER_DECLS and random rules."""
    groups = draw(st.lists(rule_groups(), min_size=1, max_size=max_groups))
    lines = [PROVIDER_DECLS]
    n = 0
    for group in groups:
        for when, actions in group:
            n += 1
            lines.append(f"rule r{n} {{")
            if when is not None:
                lines.append(f"    when {when}")
            lines.extend(f"    {a}" for a in actions)
            lines.append("}")
    if draw(st.booleans()):
        n += 1
        lines.append(f"rule r{n} {{ {draw(terminal_actions())} }}")
    return "\n".join(lines) + "\n"


# ---- requests -------------------------------------------------------------------------------

_META_VALUES = ("eu", "us", "", "a", 1, 2.5, True, None, [1, "a"], {"a": 1})


def _metadata_header(rng: random.Random) -> str | None:
    roll = rng.random()
    if roll < 0.3:
        return None
    if roll < 0.4:
        return rng.choice(("not json", "[1, 2]", '"eu"', "", "{", "null"))
    return json.dumps({k: rng.choice(_META_VALUES) for k in rng.sample(META, rng.randint(0, 3))})


def random_request(rng: random.Random) -> tuple:
    """The arguments of Policy.evaluate / Policy.interpret for one well-typed request."""
    body: dict = {}
    if rng.random() < 0.9:
        body["model"] = rng.choice(MODELS)
    for name, values in (("stream", (True, False)),
                         ("temperature", (0, 0.0, 0.5, 0.7, 1, 1.5, 2, None)),
                         ("max_tokens", (0, 1, 5, 100, 1000, None)),
                         ("user", STRINGS)):
        if rng.random() < 0.6:
            body[name] = rng.choice(values)
    if rng.random() < 0.4:
        body["tools"] = [rng.choice(({"type": "function", "function": {"name": n}}, {"name": n}, {"type": "x"}, n))
                         for n in rng.sample(TOOL_NAMES, rng.randint(0, 3))]
    if rng.random() < 0.3:
        body["tool_choice"] = rng.choice(("auto", "none", "required", "any", {"type": "function"},
                                          {"type": "tool", "name": "shell"}, {"type": "auto"}, 3))
    if rng.random() < 0.3:
        body[rng.choice(("response_format", "text"))] = rng.choice(
            ({"type": "json_schema"}, {"type": "text"}, {"format": {"type": "json_object"}}, "x", {"type": 1}))
    for path in BODY_PATHS:
        if rng.random() < 0.3:
            node, *rest = path.split(".")
            value = rng.choice(STRINGS + NUMBERS + (True, False, None, [1], {"level": "a"}))
            for step in reversed(rest):
                value = {step: value} if rng.random() < 0.8 else value
            body.setdefault(node, value if not isinstance(body.get(node), dict) else body[node])
    if rng.random() < 0.9:
        body["messages"] = [{"role": "user", "content": rng.choice(STRINGS) * rng.randint(0, 30)}
                            for _ in range(rng.randint(0, 4))]
    headers = {h: rng.choice(("free", "pro", "", "team-a", "batch", "1"))
               for h in HEADERS if rng.random() < 0.5}
    meta = _metadata_header(rng)
    if meta is not None:
        headers["x-edgerules-metadata"] = meta
    return (body, headers, rng.choice(("", "team-a", "search_team", "b")),
            rng.choice(("/v1/chat/completions", "/v1/embeddings", "/")),
            rng.choice(("POST", "GET")), rng.choice(("127.0.0.1", "10.0.0.1", "::1")),
            rng.choice((0.0, 1.5, 86_399.0, 1_700_000_000.0, rng.uniform(0, 2e9))))


@functools.cache
def requests():
    """The same requests as random_request, as a strategy that shrinks."""
    return st.randoms(use_true_random=False).map(random_request)
