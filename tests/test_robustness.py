"""Whatever text or bytes a policy holds, loading it raises PolicyError or gives a working policy;
large policies load in seconds."""
from __future__ import annotations

import random
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerules.lang.errors import PolicyError
from edgerules.lang.policy import build_policy, load_policy
from edgerules.lang.source import Source
from policy_strategies import ENV, random_request

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"

SEED_POLICY = """\
provider openai { url "https://api.openai.com/v1"  api_key env("OPENAI_API_KEY")  price gpt-4o input 2.50 output 10 }
provider demo { format echo }
key team { secret env("OPENAI_API_KEY") }
rule guard { when input_tokens > 32_000 or header("x-client") == "batch" and stream  deny 413 "too big" }
rule tier { when metadata.tier in ["free", "trial"] and not (hour >= 8)
            limit requests 20 per 1m by key, user  limit cost 5.00 per 1d else route demo/echo  tag "free" }
rule cached { when temperature == 0 and max_tokens != 100  cache ttl 1h by model  retry 3 backoff linear 50ms max 1s jitter on 429, 5xx }
rule smart { when model matches "^gpt-\\d+" route split [80% openai/gpt-4o, 20% fallback [demo/echo, "demo/x:y"]] by key }
rule rest { timeout 20s deadline 1m log full route fastest [openai, demo/echo] }
"""
# Fragments an insertion may add: whole tokens find deeper paths than single characters.
TOKENS = ("rule", "when", "route", "deny", "limit", "split", "fallback", "fastest", "provider", "key",
          "and", "or", "not", "in", "matches", "header(", "metadata.", "env(", "{", "}", "[", "]", "(",
          ")", '"', "\\", "%", "/", ",", "#", "\n", "==", "5xx", "1e9", "9" * 400, "-", "_", "ms", "é",
          "\x00", "\t", "by", "else", "cache", "retry", "on", "price", "format")


# The shipped policy's files (its *.test.rules files are tests, not policy).
SHIPPED = sorted(p for p in (ROOT / "rules").glob("*.rules") if not p.name.endswith(".test.rules"))


def corpus() -> list[str]:
    texts = [SEED_POLICY]
    texts += [p.read_text(encoding="utf-8") for p in SHIPPED]
    texts += [p.read_text(encoding="utf-8") for p in sorted(GOLDEN.glob("*/*.rules"))]
    return texts


CORPUS = corpus()


def load_or_policy_error(text: str, name: str = "fuzz.rules"):
    """Load text; anything but a Policy or PolicyError fails the test. Decides once when it loads."""
    try:
        policy = build_policy([Source(name, text)], ENV)
    except PolicyError as exc:
        assert exc.diagnostics and exc.errors
        for d in exc.diagnostics:
            assert d.location is not None and d.file == name, d
            assert d.line >= 1 and d.column >= 1
        str(exc)
        return None
    args = random_request(random.Random(len(text)))
    assert policy.evaluate(*args).to_dict() == policy.interpret(*args).to_dict()
    compile(policy.source(), "<policy>", "exec")
    return policy


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=400))
def test_random_text(text):
    load_or_policy_error(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS + tuple(" abcxyz019.")), max_size=80).map(" ".join))
def test_random_token_soup(text):
    load_or_policy_error(text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_in_a_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "random.rules"
    path.write_bytes(data)
    try:
        load_policy(path, ENV)
    except PolicyError as exc:
        for d in exc.diagnostics:
            assert d.location is not None and d.file == str(path)


@st.composite
def mutations(draw):
    text = draw(st.sampled_from(CORPUS))
    chars = list(text)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(chars)))
        kind = draw(st.sampled_from(("delete", "insert", "replace", "delete-span", "duplicate-span")))
        if kind == "insert" or not chars:
            chars[pos:pos] = draw(st.one_of(st.sampled_from(TOKENS), st.characters()))
        elif kind == "delete":
            del chars[min(pos, len(chars) - 1)]
        elif kind == "replace":
            chars[min(pos, len(chars) - 1)] = draw(st.one_of(st.sampled_from(TOKENS), st.characters()))
        else:
            end = min(len(chars), pos + draw(st.integers(1, 40)))
            span = chars[pos:end]
            chars[pos:end] = [] if kind == "delete-span" else span + span
    return "".join(chars)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_valid_policies(text):
    load_or_policy_error(text)


def test_the_seed_policies_load():
    assert load_or_policy_error(SEED_POLICY) is not None
    assert load_or_policy_error("\n".join(CORPUS[1:1 + len(SHIPPED)])) is not None


# ---- size -----------------------------------------------------------------------------------

def big_policy(rules: int) -> str:
    models = [f"model-{i}" for i in range(200)]
    out = ["provider demo { format echo }", "provider backup { format echo  price echo input 1 output 2 }"]
    for i in range(rules):
        kind = i % 10
        if kind < 5:       # runs of `model ==` for the dispatch index
            cond = f'model == "{models[i % 200]}"'
        elif kind == 5:
            cond = f'header("x-tenant") in ["t{i}", "t{i + 1}"] and temperature > 0.{i % 10}'
        elif kind == 6:
            cond = f'metadata.team == "team-{i}" or user starts_with "u{i}"'
        elif kind == 7:
            cond = f"input_tokens > {i} and not stream and hour != {i % 24}"
        elif kind == 8:
            cond = f'model matches "^m{i}-[a-z]+$"'
        else:
            cond = f'key == "k{i}"'
        action = ("route demo/echo" if kind == 0 else f'tag "t{i}"' if kind < 7
                  else f"limit requests {i + 1} per 1m by key else route backup/echo")
        out.append(f"rule r{i} {{\n    when {cond}\n    {action}\n}}")
    out.append("rule fallback_all { route fallback [demo/echo, backup/echo] }")
    return "\n".join(out) + "\n"


def timed_load(path: Path):
    start = time.perf_counter()
    policy = load_policy(path)
    elapsed = time.perf_counter() - start
    return policy, elapsed


def test_ten_thousand_rules_load_in_seconds(tmp_path):
    path = tmp_path / "big.rules"
    path.write_text(big_policy(10_000))
    policy, elapsed = timed_load(path)
    print(f"\n10,000 rules ({path.stat().st_size / 1e6:.2f} MB): loaded in {elapsed:.2f}s")
    assert len(policy.rules) == 10_001
    assert elapsed < 60
    d = policy.decide({"model": "model-150", "messages": []}, {"x-tenant": "t5"}, now=0)
    assert d.to_dict() == policy.decide({"model": "model-150", "messages": []}, {"x-tenant": "t5"}, now=0,
                                        engine="interpreted").to_dict()
    assert d.action == "route"


def test_a_one_megabyte_file_loads_in_seconds(tmp_path):
    path = tmp_path / "mb.rules"
    padding = "# " + "comment " * 60 + "\n"
    values = ", ".join(f'"value-{j}"' for j in range(40))
    parts = ["provider demo { format echo }"]
    i = 0
    while sum(len(p) for p in parts) < 1_000_000:
        parts.append(f'{padding}rule big{i} {{\n    when user in [{values}] and header("x-n") != "{i}"\n'
                     f'    tag "big-{i}"\n}}')
        i += 1
    path.write_text("\n".join(parts) + "\n")
    policy, elapsed = timed_load(path)
    print(f"\n{path.stat().st_size / 1e6:.2f} MB, {i} rules: loaded in {elapsed:.2f}s")
    assert path.stat().st_size >= 1_000_000
    assert len(policy.rules) == i
    assert elapsed < 60
    assert policy.decide({"user": "value-3"}, {"x-n": "0"}).tags == tuple(f"big-{k}" for k in range(1, i))
