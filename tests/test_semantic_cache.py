"""`cache semantic`: paraphrases hit, unrelated prompts miss, the scope holds, a failing embeddings
endpoint bypasses the cache (a real gateway, a chat upstream and an embeddings upstream)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import orjson
import pytest
from gw import start_gateway
from procs import EDGERULES, start_upstream

PAIRS = json.loads((Path(__file__).parent / "data" / "paraphrases.json").read_text())
THRESHOLD = 0.85   # rules/50-semantic-cache.rules' threshold for the echo format's vectors
ALICE, BOB = "alice-secret-1", "bob-secret-2"
POLICY = """
provider up {{ url "{chat}" }}
provider emb {{ url "{emb}" }}
key alice {{ secret env("K_ALICE") }}
key bob {{ secret env("K_BOB") }}
rule per_key {{
    when model == "m"
    cache semantic {threshold} ttl 1h using emb/text-embedding-3-small
    route up/m
}}
rule everyone {{
    when model == "s"
    cache semantic {threshold} ttl 1h using emb/text-embedding-3-small shared
    route up/m
}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    chat, emb = start_upstream(), start_upstream()
    policy = POLICY.format(chat=chat.url, emb=emb.url, threshold=THRESHOLD)
    gw = start_gateway(policy, tmp_path_factory.mktemp("semantic"), env={"K_ALICE": ALICE, "K_BOB": BOB})
    yield gw, chat, emb
    gw.stop()
    chat.stop()
    emb.stop()


def ask(gw, content: str, secret: str = ALICE, model: str = "m", **fields):
    resp = gw.chat(model, content, headers={"authorization": f"Bearer {secret}"}, **fields)
    assert resp.status_code == 200, resp.text
    return resp


def test_a_paraphrase_gets_the_stored_answer(setup):
    gw, chat, emb = setup
    before = chat.stats()["chat"]
    first = ask(gw, "How do I reset my password?")
    assert first.headers["x-edgerules-cache"] == "MISS" and "x-edgerules-similarity" not in first.headers
    again = ask(gw, "What is the way to reset my password?")
    assert again.headers["x-edgerules-cache"] == "HIT-SEMANTIC"
    assert THRESHOLD <= float(again.headers["x-edgerules-similarity"]) < 1
    assert again.json()["choices"][0]["message"]["content"] == "echo: How do I reset my password?"
    assert ask(gw, "How do I reset my password?").headers["x-edgerules-cache"] == "HIT"   # exact first
    assert chat.stats()["chat"] == before + 1
    assert emb.stats()["embeddings"] >= 2


def test_an_unrelated_prompt_misses(setup):
    gw, chat, _ = setup
    ask(gw, "What is the capital of France?", user="unrelated")
    other = ask(gw, "Write a poem about the sea.", user="unrelated")
    assert other.headers["x-edgerules-cache"] == "MISS"
    assert other.json()["choices"][0]["message"]["content"] == "echo: Write a poem about the sea."


def test_another_key_never_gets_a_keys_semantic_hit(setup):
    gw, _, _ = setup
    ask(gw, "Explain how photosynthesis works.")
    assert ask(gw, "How does photosynthesis work?").headers["x-edgerules-cache"] == "HIT-SEMANTIC"
    bob = ask(gw, "How does photosynthesis work?", secret=BOB)
    assert bob.headers["x-edgerules-cache"] == "MISS"


def test_shared_serves_every_caller(setup):
    gw, _, _ = setup
    ask(gw, "List the planets of the solar system.", model="s", user="u1")
    hit = ask(gw, "Please list the planets in the solar system", secret=BOB, model="s", user="u2")
    assert hit.headers["x-edgerules-cache"] == "HIT-SEMANTIC"


def _stream(gw, content: str):
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": content}]}
    resp = gw.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {ALICE}"})
    assert resp.status_code == 200, resp.text
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in orjson.loads(e)["choices"])
    return resp.headers, text


def test_a_streamed_answer_is_stored_and_replayed(setup):
    gw, chat, _ = setup
    headers, text = _stream(gw, "How do I undo the last git commit?")
    assert headers["x-edgerules-cache"] == "MISS" and text == "echo: How do I undo the last git commit?"
    before = chat.stats()["chat"]
    headers, replayed = _stream(gw, "Undo my last commit in git")
    assert headers["x-edgerules-cache"] == "HIT-SEMANTIC" and replayed == text
    assert chat.stats()["chat"] == before


def test_a_failing_embeddings_endpoint_bypasses_the_cache(setup):
    gw, chat, emb = setup
    emb.control(status=503)
    try:
        first = ask(gw, "What are the symptoms of the flu?", user="bypass")
        second = ask(gw, "Which symptoms does the flu have?", user="bypass")
    finally:
        emb.control(status=None)
    assert first.headers["x-edgerules-cache"] == second.headers["x-edgerules-cache"] == "BYPASS"
    assert second.json()["choices"][0]["message"]["content"] == "echo: Which symptoms does the flu have?"
    assert gw.output().count("semantic cache bypassed") == 1   # logged once, not per request
    assert 'edgerules_cache_lookups_total{result="embedding_error"} 2' in gw.http.get("/metrics").text
    assert ask(gw, "Which symptoms does the flu have?", user="bypass2").headers["x-edgerules-cache"] == "MISS"


def test_a_slow_embeddings_endpoint_bypasses_the_cache_after_two_seconds(setup):
    gw, _, emb = setup
    logged = gw.output().count("semantic cache bypassed")
    emb.control(latency="5s")
    try:
        slow = ask(gw, "How do I make a cup of green tea?", user="slow")
    finally:
        emb.control(latency=0)
    assert slow.headers["x-edgerules-cache"] == "BYPASS"
    assert gw.output().count("no answer in time") == 1 and gw.output().count("semantic cache bypassed") == logged + 1


def test_hit_rate_on_the_paraphrase_set(setup):
    """Each pair in its own scope (the `user` field): the second prompt hits the first one or not."""
    gw, _, _ = setup
    rates = {}
    for kind in ("paraphrases", "unrelated"):
        hits = 0
        for i, (a, b) in enumerate(PAIRS[kind]):
            ask(gw, a, user=f"{kind}-{i}")
            hits += ask(gw, b, user=f"{kind}-{i}").headers["x-edgerules-cache"] == "HIT-SEMANTIC"
        rates[kind] = hits / len(PAIRS[kind])
    print(f"semantic cache hit rate at {THRESHOLD}: paraphrases {rates['paraphrases']:.0%}, "
          f"unrelated {rates['unrelated']:.0%}")
    assert rates["paraphrases"] >= 0.6 and rates["unrelated"] == 0


def test_check_refuses_a_bad_semantic_cache(tmp_path):
    path = tmp_path / "bad.rules"
    path.write_text('provider demo { format echo }\n'
                    'provider claude { format anthropic api_key env("HOME") }\n'
                    'rule a { cache semantic 1.5 ttl 1h using demo/e route demo/echo }\n'
                    'rule b { when model == "b" cache semantic 0.9 ttl 1h using claude/e route demo/echo }\n')
    out = subprocess.run([EDGERULES, "check", str(path)], capture_output=True, text=True)
    assert out.returncode != 0
    assert f"{path}:3:25: error[semantic-threshold]" in out.stderr
    assert f"{path}:4:60: error[no-embeddings]: provider 'claude' (anthropic format)" in out.stderr


def test_eval_shows_and_fmt_keeps_the_semantic_cache(tmp_path):
    path = tmp_path / "p.rules"
    path.write_text('provider demo { format echo }\nrule faq { when model == "faq"\n'
                    '  cache   semantic 0.90  ttl 1h using demo/text-embedding-3-small   by key shared\n'
                    '  route demo/echo }\n')
    out = subprocess.run([EDGERULES, "eval", str(path)], input='{"model": "faq", "messages": []}',
                         capture_output=True, text=True)
    cache = json.loads(out.stdout)["cache"]
    assert cache["semantic"] == {"threshold": 0.9, "using": "demo/text-embedding-3-small"}
    assert cache["shared"] is True and cache["ttl"] == 3600
    assert subprocess.run([EDGERULES, "fmt", str(path)], capture_output=True).returncode == 0
    assert "    cache semantic 0.90 ttl 1h using demo/text-embedding-3-small by key shared\n" in path.read_text()
    assert subprocess.run([EDGERULES, "check", str(path)], capture_output=True).returncode == 0


def test_the_index_is_bounded_expires_and_drops_the_least_recently_used():
    import numpy as np
    from edgerules.gateway.semantic import VectorIndex

    def unit(i):
        v = np.zeros(4, np.float32)
        v[i % 4] = 1.0
        return v

    index = VectorIndex(4, capacity=3)
    for i in range(3):
        index.add(1, unit(i), bytes([i]), expires=100.0, now=float(i))
    assert index.nearest(1, unit(0), 0.99, now=10.0) == (b"\0", 1.0)   # row 0 is now the most recent
    assert index.nearest(2, unit(0), 0.99, now=10.0) is None              # another scope
    index.add(1, unit(3), b"\3", expires=100.0, now=11.0)                 # full: row 1 goes (least recent)
    assert len(index) == 3 and index.nearest(1, unit(1), 0.99, now=12.0) is None
    assert index.nearest(1, unit(3), 0.99, now=12.0)[0] == b"\3"
    assert index.nearest(1, unit(0), 0.99, now=100.0) is None             # expired with its ttl
    index.remove(b"\3")
    assert len(index) == 2 and index.nearest(1, unit(3), 0.99, now=12.0) is None
