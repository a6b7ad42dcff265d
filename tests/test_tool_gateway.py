"""The tool gateway through its real surface: the official mcp SDK's client against a real
`edgerules serve`, in front of two real MCP servers (tests/mcp_servers.py) and one real HTTP API
with an OpenAPI document (tests/openapi_app.py), each a subprocess."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import mcp.types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from openapi_app import OPENAPI
from procs import free_port, start_process, wait_until

HERE = Path(__file__).parent
GH_TOKEN = "Bearer gh-token-0123456789-secret"
BILLING_KEY = "billing-key-0123456789-secret"
KEYS = {"support": "sk-support-0123456789", "ops": "sk-ops-0123456789", "dev": "sk-dev-0123456789"}
ENV = {"GH_TOKEN": GH_TOKEN, "BILLING_KEY": BILLING_KEY,
       **{f"KEY_{name.upper()}": secret for name, secret in KEYS.items()}}


def start_mcp(kind: str, port: int | None = None, token: str | None = None):
    port = port or free_port()
    argv = [sys.executable, str(HERE / "mcp_servers.py"), kind, str(port), *([token] if token else [])]
    proc = start_process(argv, f"http://127.0.0.1:{port}/healthz", timeout=20)
    proc.port = port
    return proc


@pytest.fixture(scope="module")
def servers():
    github = start_mcp("github", token=GH_TOKEN)
    files = start_mcp("files")
    api_port = free_port()
    billing = start_process([sys.executable, str(HERE / "openapi_app.py"), str(api_port), BILLING_KEY],
                            f"http://127.0.0.1:{api_port}/healthz", timeout=20)
    billing.port = api_port
    yield {"github": github, "files": files, "billing": billing}
    for proc in (github, files, billing):
        proc.stop()


def declarations(servers, names=("github", "files", "billing"), cooldown: str = "") -> str:
    out = []
    if "github" in names:
        out.append(f'mcp github {{\n    url "http://127.0.0.1:{servers["github"].port}/mcp"\n'
                   f'    headers {{ "authorization" env("GH_TOKEN") }}\n    timeout 5s\n{cooldown}}}\n')
    if "files" in names:
        out.append(f'mcp files {{ url "http://127.0.0.1:{servers["files"].port}/mcp" }}\n')
    if "billing" in names:
        out.append(f'api billing {{\n    openapi "billing.openapi.json"\n'
                   f'    url "http://127.0.0.1:{servers["billing"].port}"\n    api_key env("BILLING_KEY")\n}}\n')
    return "".join(out)


pytestmark = pytest.mark.filterwarnings("ignore:Use `streamable_http_client` instead:DeprecationWarning")

KEY_BLOCKS = '''
key support { secret env("KEY_SUPPORT") tools [SUPPORT_TOOLS] }
key ops { secret env("KEY_OPS") }
key dev { secret env("KEY_DEV") }
provider echo { format echo }
rule models { route echo }
'''

RULES = '''
rule no_deletes for tools {
    when tool starts_with "delete"
    deny "deleting is not allowed through the gateway"
}
rule refunds_need_a_human for tools {
    when server == "billing" and tool == "refund" and arg("amount") > 100
    deny "refunds over 100 need a human"
}
rule ops_only for tools {
    when tool starts_with "admin_" and key != "ops"
    hide
}
rule everything_logged_in_full for tools {
    when server == "files"
    log full
}
'''


def keys(names=None) -> str:
    """The key blocks; support's globs name only declared servers (else they are `unknown-tool`)."""
    names = names or ("billing", "github")
    globs = {"billing": "billing__get_*", "github": "github__search*", "files": "files__read*"}
    return KEY_BLOCKS.replace("SUPPORT_TOOLS", ", ".join(f'"{globs[n]}"' for n in names))


def write_policy(gw, text: str) -> None:
    (gw.rules / "billing.openapi.json").write_text(json.dumps(OPENAPI))
    (gw.rules / "policy.rules").write_text(text)


def run(coro):
    return asyncio.run(coro)


async def session_do(url: str, key: str | None, fn, headers: dict | None = None):
    hdrs = dict(headers or {})
    if key:
        hdrs["authorization"] = f"Bearer {KEYS[key]}"
    async with streamablehttp_client(url, headers=hdrs) as (read, write, _):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            return await fn(session, init)


def tool_names(gw, key: str | None) -> list[str]:
    async def names(session, init):
        return sorted(t.name for t in (await session.list_tools()).tools)
    return run(session_do(gw.url + "/mcp", key, names))


def call(gw, key: str | None, name: str, args: dict | None = None) -> types.CallToolResult:
    async def do(session, init):
        return await session.call_tool(name, args or {})
    return run(session_do(gw.url + "/mcp", key, do))


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def gateway_with_policy(gateways, tmp_path, servers, rules: str = RULES, **kw):
    (tmp_path / "gw0").mkdir(exist_ok=True)
    (tmp_path / "gw0" / "billing.openapi.json").write_text(json.dumps(OPENAPI))
    gw = gateways(declarations(servers, **kw) + keys(kw.get("names")) + rules, env=ENV)
    wait_until(lambda: all(s["connected"] and s["tools"] for s in gw.admin_policy()["tool_servers"].values()),
               30, what="every tool server connected with its tools")
    return gw


ALL_GITHUB = ["github__add_tool", "github__admin_purge", "github__delete_repo", "github__echo_auth", "github__search_code",
              "github__search_issues"]
ALL_FILES = ["files__list_dir", "files__read_file"]
ALL_BILLING = ["billing__delete_invoice", "billing__echo_auth", "billing__get_invoice", "billing__get_invoices",
               "billing__refund"]


def test_list_filter_hide_deny_arg_and_secrets(gateways, tmp_path, servers):
    gw = gateway_with_policy(gateways, tmp_path, servers)
    url = gw.url + "/mcp"

    # the aggregated list, per key
    assert tool_names(gw, "ops") == sorted(ALL_GITHUB + ALL_FILES + ALL_BILLING)
    assert tool_names(gw, "support") == ["billing__get_invoice", "billing__get_invoices",
                                         "github__search_code", "github__search_issues"]
    assert "github__admin_purge" not in tool_names(gw, "dev")                       # hide
    assert sorted(set(ALL_GITHUB + ALL_FILES + ALL_BILLING) - set(tool_names(gw, "dev"))) == ["github__admin_purge"]

    # the input schema of an API operation: parameters and the JSON body
    async def schema(session, init):
        tools = {t.name: t for t in (await session.list_tools()).tools}
        return init.protocolVersion, tools["billing__refund"].inputSchema, tools["billing__get_invoice"].inputSchema
    version, refund, get = run(session_do(url, "ops", schema))
    assert version == types.LATEST_PROTOCOL_VERSION
    assert refund["required"] == ["invoice", "amount"] and set(refund["properties"]) == {"invoice", "amount"}
    assert set(get["properties"]) == {"id", "currency"} and get["required"] == ["id"]

    # allowed calls reach their server or API, and the answer comes back unchanged
    result = call(gw, "support", "github__search_issues", {"query": "leak"})
    assert (result.isError, text_of(result)) == (False, "found 3 issues for leak")
    result = call(gw, "support", "billing__get_invoice", {"id": "inv 7", "currency": "USD"})
    assert not result.isError
    assert json.loads(text_of(result)) == {"id": "inv 7", "amount": 120, "currency": "USD"}
    assert call(gw, "ops", "files__list_dir", {"path": "/x/"}).isError is False

    # denies: a tool error carrying the message
    for name, args in (("github__delete_repo", {"name": "r"}), ("billing__delete_invoice", {"id": "1"})):
        result = call(gw, "ops", name, args)
        assert (result.isError, text_of(result)) == (True, "deleting is not allowed through the gateway")
    # an arg() rule: over 100 denied, under it called
    result = call(gw, "ops", "billing__refund", {"invoice": "inv-1", "amount": 150})
    assert (result.isError, text_of(result)) == (True, "refunds over 100 need a human")
    result = call(gw, "ops", "billing__refund", {"invoice": "inv-1", "amount": 50})
    assert not result.isError and json.loads(text_of(result)) == {"refunded": 50, "invoice": "inv-1"}
    # a key's globs and hide: the tool does not exist for this caller
    assert text_of(call(gw, "support", "billing__refund", {"invoice": "i", "amount": 1})) == \
        "unknown tool 'billing__refund'"
    assert text_of(call(gw, "dev", "github__admin_purge")) == "unknown tool 'github__admin_purge'"
    assert text_of(call(gw, "ops", "github__admin_purge")) == "purged"

    # secrets planted in headers and api_key: the servers echo them, the agent never sees them
    for name in ("github__echo_auth", "billing__echo_auth"):
        answer = text_of(call(gw, "ops", name))
        assert answer == "you sent: [redacted]" or answer == "you sent: Bearer [redacted]", answer

    # the gateway's keys guard /mcp
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    accept = {"accept": "application/json, text/event-stream"}
    assert gw.http.post("/mcp", json=body, headers=accept).status_code == 401
    bad = gw.http.post("/mcp", json=body, headers={**accept, "authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    # the earlier protocol version is still accepted
    ok = gw.http.post("/mcp", json=body, headers={**accept, "authorization": f"Bearer {KEYS['ops']}"})
    assert ok.status_code == 200 and ok.json()["result"]["protocolVersion"] == "2025-03-26"

    # one access-log line a call; arguments only with `log full`
    lines = [json.loads(line[line.index("{"):]) for line in gw.output().splitlines()
             if '"kind":"tool"' in line]
    denied = [e for e in lines if e.get("decision") == "denied"]
    assert {(e["server"], e["tool"]) for e in denied} >= {("github", "delete_repo"), ("billing", "refund")}
    assert all("arguments" not in e for e in lines if e["server"] != "files")
    assert [e["arguments"] for e in lines if e["server"] == "files"] == [{"path": "/x/"}]
    metrics = gw.http.get("/metrics").text
    assert 'edgerules_tool_calls_total{server="github",decision="denied",status="refused"} 1' in metrics
    assert 'edgerules_tool_calls_total{server="billing",decision="call",status="ok"}' in metrics

    # nowhere a client or a log sees
    seen = gw.output() + metrics + gw.http.get("/admin/policy").text
    for secret in (GH_TOKEN, GH_TOKEN.split()[1], BILLING_KEY, *KEYS.values()):
        assert secret not in seen


def test_limit_calls_is_exact_under_concurrency(gateways, tmp_path, servers):
    rules = '''
rule pace for tools {
    when server == "files"
    limit calls 7 per 1m by key
}
'''
    gw = gateway_with_policy(gateways, tmp_path, servers, rules, names=("files",))

    async def burst(session, init):
        return await asyncio.gather(*(session.call_tool("files__read_file", {"path": f"/{i}"}) for i in range(30)))

    async def sessions():
        url = gw.url + "/mcp"
        return await asyncio.gather(*(session_do(url, "ops", burst) for _ in range(2)))

    results = [r for batch in run(sessions()) for r in batch]
    ok = [r for r in results if not r.isError]
    refused = [text_of(r) for r in results if r.isError]
    assert len(ok) == 7 and len(refused) == 53
    assert all(t.startswith("rate limit exceeded: rule 'pace' allows 7 calls per 60s; retry in ") for t in refused)
    # per key: another key has its own 7
    assert not call(gw, "dev", "files__read_file", {"path": "/a"}).isError


def test_a_server_killed_mid_session_errors_opens_the_circuit_and_recovers(gateways, tmp_path, servers):
    github = start_mcp("github", token=GH_TOKEN)
    try:
        local = {**servers, "github": github}
        gw = gateway_with_policy(gateways, tmp_path, local, "", names=("github",),
                                 cooldown="    cooldown 1s after 2 failures\n")

        async def scenario(session, init):
            first = await session.call_tool("github__search_code", {"query": "a"})
            github.stop()
            failures = [await session.call_tool("github__search_code", {"query": "b"}) for _ in range(3)]
            return first, failures

        first, failures = run(session_do(gw.url + "/mcp", "ops", scenario))
        assert (first.isError, text_of(first)) == (False, "found code for a")
        assert all(f.isError for f in failures)
        assert "circuit open" in text_of(failures[-1]), [text_of(f) for f in failures]
        assert "circuit open" not in text_of(failures[0])
        wait_until(lambda: gw.admin_policy()["tool_health"]["github"]["failures"] >= 2, 10, what="failures counted")

        restarted = start_mcp("github", port=github.port, token=GH_TOKEN)
        try:
            def recovered():
                result = call(gw, "ops", "github__search_code", {"query": "c"})
                return not result.isError and text_of(result) == "found code for c"
            wait_until(recovered, 60, interval=0.3, what="the server answering through the gateway again")
            assert gw.admin_policy()["tool_health"]["github"]["open"] is False
        finally:
            restarted.stop()
    finally:
        github.stop()


def test_a_reload_adds_a_server(gateways, tmp_path, servers):
    rules = 'rule ops_only for tools {\n    when tool starts_with "admin_" and key != "ops"\n    hide\n}\n'
    gw = gateway_with_policy(gateways, tmp_path, servers, rules, names=("github",))
    assert not any(n.startswith("files__") for n in tool_names(gw, "ops"))
    write_policy(gw, declarations(servers, ("github", "files")) + keys(("github", "files")) + rules)
    assert gw.http.post("/admin/reload").json()["ok"] is True
    wait_until(lambda: sorted(n for n in tool_names(gw, "ops") if n.startswith("files__")) == ALL_FILES,
               30, interval=0.2, what="the new server's tools listed")
    assert text_of(call(gw, "ops", "files__read_file", {"path": "/r"})) == "contents of /r"
    assert "github__search_code" in tool_names(gw, "ops")   # the kept server's session survived

    # a server removed, an api added, then its OpenAPI document changed alone
    smaller = {**OPENAPI, "paths": {k: v for k, v in OPENAPI["paths"].items() if k != "/invoices"}}
    (gw.rules / "policy.rules").write_text(declarations(servers, ("files", "billing")) + keys(("files", "billing")))
    (gw.rules / "billing.openapi.json").write_text(json.dumps(smaller))
    assert gw.http.post("/admin/reload").json()["ok"] is True
    names = tool_names(gw, "ops")
    assert not any(n.startswith("github__") for n in names)
    assert "billing__get_invoice" in names and "billing__get_invoices" not in names
    (gw.rules / "billing.openapi.json").write_text(json.dumps(OPENAPI))
    assert gw.http.post("/admin/reload").json()["changed"] is True
    assert "billing__get_invoices" in tool_names(gw, "ops")


def test_a_server_that_changes_its_tools_is_listed_again(gateways, tmp_path, servers):
    github = start_mcp("github", token=GH_TOKEN)
    try:
        gw = gateway_with_policy(gateways, tmp_path, {**servers, "github": github}, "", names=("github",))
        assert "github__fresh" not in tool_names(gw, "ops")
        assert text_of(call(gw, "ops", "github__add_tool", {"name": "fresh"})) == "added fresh"
        wait_until(lambda: "github__fresh" in tool_names(gw, "ops"), 30, interval=0.1,
                   what="the tool announced by notifications/tools/list_changed")
        assert text_of(call(gw, "ops", "github__fresh")) == "fresh here"
    finally:
        github.stop()


def test_the_shipped_demo_runs_offline(gateways, tmp_path):
    gw = gateways((HERE.parent / "rules" / "40-tools.rules").read_text())
    assert tool_names(gw, None) == ["demo__add", "demo__echo"]
    assert text_of(call(gw, None, "demo__add", {"a": 2, "b": 3})) == "5"
    assert text_of(call(gw, None, "demo__add", {"a": 2_000_000, "b": 1})) == "sums over a million need a human"

    async def ops(session, init):
        return sorted(t.name for t in (await session.list_tools()).tools)
    assert "demo__admin_stats" in run(session_do(gw.url + "/mcp", None, ops, headers={"x-team": "ops"}))


def test_an_open_gateway_serves_mcp_without_a_key(gateways, tmp_path):
    gw = gateways('mcp demo { builtin echo }\n')
    result = call(gw, None, "demo__echo", {"text": "hi"})
    assert (result.isError, text_of(result)) == (False, "hi")
    assert httpx.get(gw.url + "/mcp", timeout=5).status_code in (400, 405, 406)


def test_a_gateway_without_tool_servers_gains_them_by_a_reload(gateways):
    # No tool server at start: the MCP side is made on first need (the SDK is not even imported),
    # by a call to /mcp (an empty list) or by the reload that declares the first server.
    plain = 'provider demo { format echo }\nrule r { route demo/echo }\n'
    for asked_first in (True, False):
        gw = gateways(plain)
        assert gw.admin_policy().get("tool_servers", {}) == {}
        if asked_first:
            assert tool_names(gw, None) == []
        (gw.rules / "policy.rules").write_text(plain + 'mcp demo { builtin echo }\n')
        assert gw.http.post("/admin/reload").json()["ok"] is True
        result = call(gw, None, "demo__echo", {"text": "back"})
        assert (result.isError, text_of(result)) == (False, "back")
