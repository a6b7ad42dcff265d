"""A load prepared in another process (prepare_policy, as the reload helper runs it) comes back as
the policy load_policy() gives: same version, code and decisions; its errors are load_policy's;
a policy whose constants cannot travel is loaded in-process instead (None)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgerules.drills.synth import synthetic_policy, synthetic_requests
from edgerules.lang.errors import PolicyError
from edgerules.lang.policy import load_policy, prepare_policy, prepared_policy

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_750_000_000.0


def test_a_prepared_policy_decides_as_the_loaded_one(tmp_path):
    path = tmp_path / "policy.rules"
    path.write_text(synthetic_policy(300))
    loaded, prepared = load_policy(path), prepared_policy(prepare_policy(path))
    assert prepared is not None
    assert (prepared.version, prepared.rules, prepared.source()) == (loaded.version, loaded.rules, loaded.source())
    assert prepared.models() == loaded.models() and prepared.model_ids() == loaded.model_ids()
    for body, headers, key in synthetic_requests(50, n_rules=300):
        assert prepared.decide(body, headers, key, now=NOW).to_dict() == loaded.decide(body, headers, key, now=NOW).to_dict()


def test_a_prepared_error_is_the_load_error(tmp_path):
    path = tmp_path / "policy.rules"
    path.write_text('provider p { format echo }\nrule r {\n  when modle == "x"\n  route p\n}\n')
    with pytest.raises(PolicyError) as direct:
        load_policy(path)
    with pytest.raises(PolicyError) as prepared:
        prepared_policy(prepare_policy(path))
    assert str(prepared.value) == str(direct.value)
    assert prepared.value.diagnostics == direct.value.diagnostics


def test_the_shipped_rules_with_regexes_travel_and_decide_alike():
    # `matches` binds a memoised RE2 search and `ip in [...]` a network test: both are partials of
    # module-level functions, so a big policy that uses them still reloads through the helper
    loaded, prepared = load_policy(ROOT / "rules"), prepared_policy(prepare_policy(ROOT / "rules"))
    assert prepared is not None and prepared.version == loaded.version
    for body, headers in [({"model": "smart", "messages": [{"role": "user", "content": "hi"}]}, {}),
                          ({"model": "gpt-4o-mini"}, {"x-plan": "free"}),
                          ({"model": "demo/echo", "user": "bot-123"}, {"x-client": "batch"})]:
        assert prepared.decide(body, headers, None, now=NOW).to_dict() == loaded.decide(body, headers, None, now=NOW).to_dict()


def test_a_policy_that_cannot_travel_is_loaded_in_process(monkeypatch):
    import edgerules.lang.codegen as codegen

    monkeypatch.setattr(codegen, "memo_search", lambda pattern: lambda text: pattern.search(text) is not None)
    assert prepared_policy(prepare_policy(ROOT / "rules")) is None   # a local function: pickle refuses it
