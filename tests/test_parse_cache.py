"""A load re-parses only the files whose text changed since a load before it in this process."""
from __future__ import annotations

import pytest

from edgerules.lang.errors import PolicyError
from edgerules.lang.policy import load_policy, parse_cache_info

PROVIDERS = 'provider demo { format echo }\n'


def rules_file(name: str, count: int, deny: int = 403) -> str:
    return "".join(f'rule {name}_{i} {{ when header("x-{name}") == "{i}" deny {deny} "no" }}\n'
                   for i in range(count))


def write(tmp_path, **files) -> None:
    for name, text in files.items():
        (tmp_path / f"{name}.rules").write_text(text)


def loaded(tmp_path):
    before = parse_cache_info()
    policy = load_policy(tmp_path)
    after = parse_cache_info()
    return policy, after["misses"] - before["misses"], after["hits"] - before["hits"]


def test_a_reload_after_editing_one_file_parses_that_file_only(tmp_path):
    write(tmp_path, a=PROVIDERS + "rule fallback { route demo/echo }\n", b=rules_file("b", 50), c=rules_file("c", 50))
    first, parsed, reused = loaded(tmp_path)
    assert (parsed, reused) == (3, 0)

    lines = rules_file("b", 50).splitlines(keepends=True)
    lines[-1] = lines[-1].replace("deny 403", "deny 429")   # a one-line edit
    write(tmp_path, b="".join(lines))
    policy, parsed, reused = loaded(tmp_path)
    assert (parsed, reused) == (1, 2)
    assert policy.version != first.version
    assert len(policy.rules) == len(first.rules)

    _, parsed, reused = loaded(tmp_path)   # nothing changed: nothing parsed
    assert (parsed, reused) == (0, 3)


def test_a_reused_parse_gives_the_same_policy_as_a_fresh_one(tmp_path):
    write(tmp_path, a=PROVIDERS + rules_file("a", 20) + "rule fallback { route demo/echo }\n")
    fresh, parsed, _ = loaded(tmp_path)
    again, _, reused = loaded(tmp_path)
    assert parsed == 1 and reused == 1
    assert again.version == fresh.version and again.source() == fresh.source()


def test_a_file_moved_to_another_name_is_parsed_again(tmp_path):
    text = rules_file("m", 5)
    write(tmp_path, a=PROVIDERS + "rule fallback { route demo/echo }\n", m=text)
    loaded(tmp_path)
    (tmp_path / "m.rules").rename(tmp_path / "n.rules")   # locations name the file: not the same parse
    _, parsed, reused = loaded(tmp_path)
    assert (parsed, reused) == (1, 1)


def test_syntax_errors_are_reported_on_every_load_of_a_broken_file(tmp_path):
    write(tmp_path, a=PROVIDERS + "rule fallback { route demo/echo }\n", b='rule broken { when }\n')
    for _ in range(2):
        with pytest.raises(PolicyError) as info:
            load_policy(tmp_path)
        assert "b.rules:1:" in str(info.value) and "syntax" in str(info.value)
