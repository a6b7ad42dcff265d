"""The tool side of the language: mcp/api blocks, key tools globs, `rule NAME for tools`, the
checker's scope errors, the tool decision function (compiled and interpreted), eval --tool."""
from __future__ import annotations

import json
import subprocess

import pytest

from edgerules.lang.errors import PolicyError
from edgerules.lang.policy import build_policy, load_policy
from edgerules.lang.source import Source
from procs import EDGERULES

OPENAPI = {
    "openapi": "3.0.3", "info": {"title": "billing", "version": "1"},
    "paths": {
        "/invoices/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"operationId": "get_invoice", "summary": "one invoice",
                    "parameters": [{"name": "expand", "in": "query", "schema": {"type": "boolean"}}]},
            "delete": {"operationId": "delete_invoice"},
        },
        "/refunds": {"post": {"operationId": "refund", "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/Refund"}}}}}},
        "/health": {"get": {"summary": "no operationId: not a tool"}},
    },
    "components": {"schemas": {"Refund": {"type": "object", "required": ["amount"], "properties": {
        "invoice": {"type": "string"}, "amount": {"type": "number"}}}}},
}

POLICY = '''\
mcp github {
    url "http://127.0.0.1:9/mcp"
    headers { "authorization" env("GH_TOKEN") }
    timeout 30s
}
api billing {
    openapi "billing.json"
    url "http://127.0.0.1:9/"
    api_key env("BILLING_KEY")
}
provider echo { format echo }
key support_bot { secret env("K1") tools ["billing__get_*", "github__search*"] }
key ops { secret env("K2") }
rule no_deletes for tools {
    when tool starts_with "delete"
    deny "deleting is not allowed through the gateway"
}
rule refunds_need_a_human for tools {
    when server == "billing" and tool == "refund" and arg("amount") > 100
    deny "refunds over 100 need a human"
}
rule github_pace for tools {
    when server == "github"
    limit calls 30 per 1m by key
    timeout 20s
    retry 2
}
rule ops_only for tools {
    when tool starts_with "admin_" and key != "ops"
    hide
}
rule nested for tools {
    when arg("filter.owner") == "me" and header("x-team") == "a"
    tag "mine"
}
rule models { route echo }
'''
ENV = {"GH_TOKEN": "Bearer gh-secret", "BILLING_KEY": "bill-secret", "K1": "k1", "K2": "k2"}


@pytest.fixture
def policy_dir(tmp_path):
    (tmp_path / "billing.json").write_text(json.dumps(OPENAPI))
    (tmp_path / "tools.rules").write_text(POLICY)
    return tmp_path


def load(policy_dir, text: str = POLICY, env=None):
    path = policy_dir / "tools.rules"
    path.write_text(text)
    return load_policy(path, ENV if env is None else env)


def errors(policy_dir, text: str, env=None):
    with pytest.raises(PolicyError) as info:
        load(policy_dir, text, env)
    return [(d.code, d.line, d.column, d.message) for d in info.value.diagnostics if d.severity == "error"]


def test_servers_keys_and_rules_load(policy_dir):
    p = load(policy_dir)
    github, billing = p.servers["github"], p.servers["billing"]
    assert (github.kind, github.url, github.timeout, github.headers) == (
        "mcp", "http://127.0.0.1:9/mcp", 30.0, (("authorization", "Bearer gh-secret"),))
    assert billing.url == "http://127.0.0.1:9" and billing.api_key == "bill-secret"
    assert billing.tool_names() == ("billing__get_invoice", "billing__delete_invoice", "billing__refund")
    assert "gh-secret" not in repr(github) and "bill-secret" not in repr(billing)
    get = billing.operations[0]
    assert (get.method, get.path, get.params, get.body) == ("GET", "/invoices/{id}",
                                                            (("id", "path"), ("expand", "query")), "")
    assert json.loads(get.input_schema) == {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string"}, "expand": {"type": "boolean"}}}
    refund = billing.operations[2]
    assert refund.body == "fields"
    assert json.loads(refund.input_schema)["required"] == ["amount"]
    keys = {k.name: k for k in p.keys}
    assert keys["support_bot"].tools == ("billing__get_*", "github__search*")
    assert keys["support_bot"].sees_tool("billing__get_invoice")
    assert not keys["support_bot"].sees_tool("billing__refund")
    assert keys["ops"].sees_tool("anything__at_all")
    assert p.rules == ("models",)
    assert p.tool_rules == ("no_deletes", "refunds_need_a_human", "github_pace", "ops_only", "nested")


@pytest.mark.parametrize("engine", ["compiled", "interpreted"])
def test_tool_decisions(policy_dir, engine):
    p = load(policy_dir)

    def decide(server, tool, args=None, key="support_bot", headers=None):
        return p.decide_tool(server, tool, args or {}, headers, key, engine=engine).to_dict()

    d = decide("billing", "delete_invoice", {"id": "1"})
    assert (d["action"], d["rule"], d["deny"]) == (
        "deny", "no_deletes", {"message": "deleting is not allowed through the gateway"})
    assert decide("billing", "refund", {"amount": 150})["deny"] == {"message": "refunds over 100 need a human"}
    assert decide("billing", "refund", {"amount": 100})["action"] == "call"
    assert decide("billing", "refund", {"amount": "150"})["action"] == "call"   # mistyped: false
    assert decide("billing", "refund", {})["action"] == "call"                  # missing: false
    d = decide("github", "search_issues")
    assert (d["action"], d["timeout"], d["retry"]["attempts"]) == ("call", 20.0, 2)
    assert sorted(d["retry"]["on"]) == sorted(["429", "5xx", "timeout", "connect"])
    assert d["limits"][0]["kind"] == "calls" and d["limits"][0]["values"] == ["support_bot"]
    assert decide("github", "admin_purge")["action"] == "hide"
    assert decide("github", "admin_purge", key="ops")["action"] == "call"
    assert decide("github", "x", {"filter": {"owner": "me"}}, headers={"X-Team": "a"})["tags"] == ["mine"]
    assert decide("github", "x", {"filter": "me"}, headers={"X-Team": "a"})["tags"] == []


def test_model_rules_never_see_tool_rules(policy_dir):
    p = load(policy_dir)
    d = p.decide({"model": "gpt-x", "messages": []}, key="support_bot")
    assert d.matched == ["models"] and d.route is not None
    assert "decide_tool" in p.source() and "def decide(" in p.source()


def test_a_policy_without_tool_rules_has_no_tool_function(policy_dir):
    p = load(policy_dir, "provider echo { format echo }\nrule r { route echo }\n")
    assert p.evaluate_tool is None and p.decide_tool("a", "b").action == "call"
    assert "decide_tool" not in p.source()


@pytest.mark.parametrize("text, expected", [
    ('mcp a { url "http://x" }\nrule r for tools { when model == "x" deny "no" }\n',
     ("rule-scope", 2, 25, "'model' is a field of model rules, not of tool rules")),
    ('mcp a { url "http://x" }\nrule r { when server == "a" deny 403 }\n',
     ("rule-scope", 2, 15, "'server' is a field of tool rules")),
    ('mcp a { url "http://x" }\nrule r { when key == "a" hide }\n',
     ("rule-scope", 2, 26, "'hide' is an action of tool rules")),
    ('rule r { deny "why" }\n', ("deny-status", 1, 10, "a model rule's deny needs a status")),
    ('mcp a { url "http://x" }\nrule r for tools { deny 403 "x" }\n',
     ("rule-scope", 2, 25, "a tool rule's deny takes a message, not a status")),
    ('provider p { format echo }\nrule r for tools { route p }\n',
     ("rule-scope", 2, 20, "'route' is an action of model rules, not of tool rules")),
    ('rule r for tools { limit requests 3 per 1m }\n',
     ("rule-scope", 1, 20, "a tool rule limits calls, not requests")),
    ('rule r { limit calls 3 per 1m }\n', ("rule-scope", 1, 10, "'limit calls' is for tool rules")),
    ('mcp github { url "http://x" }\nrule r for tools { when server == "gihub" deny }\n',
     ("unknown-server", 2, 35, "unknown server 'gihub'")),
    ('mcp git__hub { url "http://x" }\n', ("bad-server-name", 1, 5, "server name 'git__hub' contains '__'")),
    ('mcp a { }\n', ("missing-url", 1, 5, "mcp server 'a' needs a url")),
    ('mcp a { builtin nope }\n', ("bad-builtin", 1, 17, "unknown built-in server 'nope'")),
    ('mcp a { url "http://x" }\napi a { openapi "billing.json" url "http://y" }\n',
     ("duplicate-server", 2, 5, "server 'a' is already declared at {dir}/tools.rules:1:5")),
    ('api b { openapi "nope.json" url "http://y" }\n',
     ("bad-openapi", 1, 17, "cannot read '{dir}/nope.json': No such file or directory")),
    ('api billing { openapi "billing.json" url "http://y" }\nkey k { secret "s" tools ["billing__nope*"] }\n',
     ("unknown-tool", 2, 27, "'billing__nope*' matches no tool of the declared servers")),
])
def test_checker_errors(policy_dir, text, expected):
    code, line, column, message = expected
    assert errors(policy_dir, text) == [(code, line, column, message.format(dir=policy_dir))]


def test_key_globs_of_mcp_servers_are_checked_at_run_time(policy_dir):
    p = load(policy_dir, 'mcp gh { url "http://x" }\nkey k { secret env("K1") tools ["gh__*", "g*__x"] }\n')
    assert [k.tools for k in p.keys] == [("gh__*", "g*__x")]


def test_tool_rules_format_and_keep_their_meaning(policy_dir):
    run = subprocess.run([EDGERULES, "fmt", str(policy_dir / "tools.rules"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode in (0, 1), run.stderr
    subprocess.run([EDGERULES, "fmt", str(policy_dir / "tools.rules")], check=True, capture_output=True)
    assert load_policy(policy_dir / "tools.rules", ENV).tool_rules == load(policy_dir).tool_rules


def test_eval_tool_on_the_command_line(policy_dir):
    env = {**ENV, "PATH": "/usr/bin:/bin"}
    run = subprocess.run([EDGERULES, "eval", str(policy_dir / "tools.rules"), "--tool", "billing__refund",
                          "--args", '{"amount": 500}', "--key", "support_bot"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert (out["action"], out["key_sees_tool"], out["deny"]["message"]) == (
        "deny", False, "refunds over 100 need a human")
    bad = subprocess.run([EDGERULES, "eval", str(policy_dir / "tools.rules"), "--tool", "nowhere__x"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "no mcp or api server named 'nowhere'" in bad.stderr


def test_the_shipped_tool_rules(tmp_path):
    p = load_policy("rules")
    assert p.servers["demo"].builtin == "echo"
    assert p.decide_tool("demo", "add", {"a": 2_000_000, "b": 1}).deny == "sums over a million need a human"
    assert p.decide_tool("demo", "admin_stats").hide
    assert not p.decide_tool("demo", "admin_stats", headers={"x-team": "ops"}).hide


def test_a_build_without_files_knows_no_openapi_document():
    with pytest.raises(PolicyError) as info:
        build_policy([Source("t.rules", 'api b { url "http://y" }\n')], {})
    assert [d.code for d in info.value.diagnostics] == ["bad-openapi"]


# ---- compiled and interpreted tool decisions agree (random rules and calls) ------------------

from hypothesis import given, settings, strategies as st   # noqa: E402

_SERVERS = ("gh", "fs")
_TOOLS = ("search", "delete_x", "admin_y", "read")
_VALUES = st.one_of(st.integers(-5, 5), st.sampled_from(["a", "b", "delete"]), st.booleans(), st.none())
_ARGS = st.dictionaries(st.sampled_from(["n", "s", "b"]),
                        st.one_of(_VALUES, st.dictionaries(st.sampled_from(["n", "s"]), _VALUES, max_size=2)),
                        max_size=3)


def _condition():
    compare = st.one_of(
        st.sampled_from(_SERVERS).map(lambda s: f'server == "{s}"'),
        st.sampled_from(_TOOLS).map(lambda t: f'tool == "{t}"'),
        st.sampled_from(["delete", "admin_", "s"]).map(lambda p: f'tool starts_with "{p}"'),
        st.tuples(st.sampled_from(["n", "s.n", "b.n"]), st.sampled_from([">", "<=", "==", "!="]),
                  st.integers(-3, 3)).map(lambda t: f'arg("{t[0]}") {t[1]} {t[2]}'),
        st.tuples(st.sampled_from(["s", "n.s"]), st.sampled_from(["a", "del"])).map(
            lambda t: f'arg("{t[0]}") contains "{t[1]}"'),
        st.sampled_from(["true", "false"]).map(lambda v: f'arg("b") == {v}'),
        st.sampled_from(['key == "k1"', 'key != "k2"', 'header("x-t") == "ops"', "hour >= 0"]),
    )
    return st.lists(compare, min_size=1, max_size=3).map(lambda parts: " and ".join(parts))


_ACTION = st.sampled_from(['deny "no"', "hide", 'tag "t"', "timeout 3s", "limit calls 3 per 1m by key",
                           "retry 2", "log full"])
_RULE = st.tuples(st.one_of(st.none(), _condition()), st.lists(_ACTION, min_size=1, max_size=3))


@settings(max_examples=60, deadline=None)
@given(rules=st.lists(_RULE, min_size=1, max_size=6),
       calls=st.lists(st.tuples(st.sampled_from(_SERVERS), st.sampled_from(_TOOLS), _ARGS,
                                st.sampled_from(["", "k1", "k2"]), st.sampled_from([{}, {"x-t": "ops"}])),
                      min_size=1, max_size=8))
def test_compiled_and_interpreted_tool_decisions_agree(rules, calls):
    text = 'mcp gh { url "http://x" }\nmcp fs { url "http://y" }\n'
    for i, (cond, actions) in enumerate(rules):
        when = f"    when {cond}\n" if cond else ""
        text += f"rule r{i} for tools {{\n{when}" + "".join(f"    {a}\n" for a in actions) + "}\n"
    try:
        policy = build_policy([Source("t.rules", text)], {})
    except PolicyError as exc:
        # Only checks that do not depend on tool fields may refuse a random policy.
        assert {d.code for d in exc.diagnostics} <= {"type-mismatch"}, text
        return
    for server, tool, args, key, headers in calls:
        compiled = policy.decide_tool(server, tool, args, headers, key, now=0).to_dict()
        interpreted = policy.decide_tool(server, tool, args, headers, key, now=0, engine="interpreted").to_dict()
        assert compiled == interpreted, (text, server, tool, args)


def test_the_dispatch_index_covers_tool_rules():
    text = 'mcp gh { url "http://x" }\n' + "".join(
        f'rule r{i} for tools {{\n    when tool == "t{i}" and arg("n") > {i}\n    deny "r{i}"\n}}\n' for i in range(12))
    policy = build_policy([Source("t.rules", text)], {})
    assert "_D1.get(tool)" in policy.source()
    for i in range(12):
        for n in (i, i + 1):
            compiled = policy.decide_tool("gh", f"t{i}", {"n": n}).to_dict()
            assert compiled == policy.decide_tool("gh", f"t{i}", {"n": n}, engine="interpreted").to_dict()
            assert compiled["deny"] == ({"message": f"r{i}"} if n > i else None)
