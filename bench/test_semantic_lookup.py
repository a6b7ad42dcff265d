"""The semantic cache's lookup: one float32 matrix-vector product over every row, then the scope and
expiry masks and an argmax (engine/gateway/semantic.py VectorIndex.nearest), at 10k and 100k rows of
256 dimensions, all in the looked-up scope (the worst case) and spread over 100 scopes.

The index is filled with random unit vectors in bulk, so that `--benchmark-disable` (CI) runs in a
second or two; each lookup asks for a noisy copy of one stored row and must find it.
`python3 -m pytest bench/test_semantic_lookup.py` gives the figures.
"""
from __future__ import annotations

import functools

from edgerules.gateway.semantic import DIMENSIONS, VectorIndex  # first: it sets numpy's BLAS threads

import numpy as np  # noqa: E402
import pytest

NOW = 1000.0


@functools.cache
def full_index(rows: int) -> VectorIndex:
    rng = np.random.default_rng(7)
    index = VectorIndex(DIMENSIONS, rows)
    index._grow(rows)
    # Random bytes as int8 components: random directions, made ten times faster than normal draws.
    noise = np.frombuffer(rng.bytes(rows * DIMENSIONS), dtype=np.int8)
    index.vectors = noise.astype(np.float32).reshape(rows, DIMENSIONS)
    index.vectors /= np.linalg.norm(index.vectors, axis=1, keepdims=True)
    index.expires[:] = NOW + 3600
    index.keys = [i.to_bytes(4, "little") for i in range(rows)]
    index.slots = {k: i for i, k in enumerate(index.keys)}
    index.top = rows
    return index


def filled_index(rows: int, scopes: int) -> VectorIndex:
    index = full_index(rows)
    index.groups[:] = 1 + np.arange(rows) % scopes
    return index


@pytest.mark.parametrize("rows", [10_000, 100_000])
@pytest.mark.parametrize("scopes", [1, 100])
def test_semantic_lookup(benchmark, rows, scopes):
    index = filled_index(rows, scopes)
    target = rows // 3
    query = index.vectors[target] + np.random.default_rng(1).normal(0, 0.01, DIMENSIONS).astype(np.float32)
    query /= np.linalg.norm(query)
    group = int(index.groups[target])
    found = benchmark(index.nearest, group, query, 0.95, NOW)
    assert found is not None and found[0] == target.to_bytes(4, "little") and found[1] > 0.95
    benchmark.extra_info.update(rows=rows, scopes=scopes, matrix_mib=round(index.vectors.nbytes / 2**20, 1))


def test_paraphrase_hit_rate_by_threshold():
    """tests/data/paraphrases.json through the echo format's vectors and the index: for each pair,
    the first prompt is stored in a scope of its own and the second looked up. Printed with -s."""
    import json
    from pathlib import Path

    from edgerules.gateway.providers import echo
    from edgerules.gateway.semantic import unit_vector

    pairs = json.loads((Path(__file__).parent.parent / "tests" / "data" / "paraphrases.json").read_text())

    def embed(text: str) -> np.ndarray:
        return unit_vector(echo.embeddings({"input": text, "dimensions": DIMENSIONS}, "e"))

    rates = {}
    for threshold in (0.7, 0.8, 0.85, 0.9, 0.95):
        for kind in ("paraphrases", "unrelated"):
            index = VectorIndex(DIMENSIONS, 100)
            for scope, (first, _) in enumerate(pairs[kind], 1):
                index.add(scope, embed(first), first.encode(), expires=NOW + 1, now=NOW)
            hits = sum(index.nearest(scope, embed(second), threshold, NOW) is not None
                       for scope, (_, second) in enumerate(pairs[kind], 1))
            rates[threshold, kind] = hits / len(pairs[kind])
        print(f"threshold {threshold}: paraphrases hit {rates[threshold, 'paraphrases']:.0%}, "
              f"unrelated pairs hit {rates[threshold, 'unrelated']:.0%}")
    assert rates[0.85, "paraphrases"] >= 0.7 and rates[0.85, "unrelated"] == 0   # rules/50-semantic-cache.rules
