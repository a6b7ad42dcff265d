"""Tool rules, phase 3 (decide): the compiled decide_tool against the reference interpreter on a
policy of tool rules (deny, arg() comparisons, hide, limits), the same calls for both; and what a
call of the listing costs (one decision per tool, no arguments)."""
from __future__ import annotations

import pytest

from edgerules.lang.policy import build_policy
from edgerules.lang.source import Source

SERVERS = ("github", "billing", "files")
POLICY = "".join(f'mcp {s} {{ url "http://127.0.0.1:9/{s}" }}\n' for s in SERVERS) + '''
rule no_deletes for tools { when tool starts_with "delete" deny "no deletes" }
rule refunds for tools { when server == "billing" and tool == "refund" and arg("amount") > 100 deny "human" }
rule owners for tools { when arg("filter.owner") == "me" and header("x-team") == "a" tag "mine" }
rule ops_only for tools { when tool starts_with "admin_" and key != "ops" hide }
rule pace for tools { when server == "github" limit calls 30 per 1m by key timeout 20s }
''' + "".join(f'rule r{i} for tools {{ when tool == "t{i}" and arg("n") > {i} deny "r{i}" }}\n' for i in range(20))

CALLS = [(s, t, a, {"x-team": "a"}, k, "127.0.0.1", 0.0)
         for s in SERVERS
         for t in ("search", "refund", "delete_repo", "admin_purge", "t7", "t19")
         for a in ({}, {"amount": 150}, {"filter": {"owner": "me"}}, {"n": 30})
         for k in ("ops", "bot")]


@pytest.fixture(scope="module")
def policy():
    return build_policy([Source("tools.rules", POLICY)], {})


def test_engines_agree(policy):
    for call in CALLS:
        assert policy.evaluate_tool(*call).to_dict() == policy.interpret_tool(*call).to_dict()


@pytest.mark.parametrize("engine", ("compiled", "interpreter"))
def test_decide_tool(benchmark, policy, engine):
    benchmark.group = "3. decide: tool rules"
    benchmark.extra_info["decisions_per_round"] = len(CALLS)
    fn = policy.evaluate_tool if engine == "compiled" else policy.interpret_tool

    def one_round():
        for call in CALLS:
            fn(*call)
    benchmark(one_round)
