"""Checks of the tool side: `mcp` and `api` declarations (the OpenAPI document read at load time),
key `tools` globs, and `rule NAME for tools` (tool fields and actions only; model rules may use
neither)."""
from __future__ import annotations

import difflib
import os
from fnmatch import fnmatchcase

import orjson

from .. import ast
from ..schema import FIELDS
from ..source import Location
from ..spec import (
    DEFAULT_COOLDOWN, DEFAULT_FAILURES, DEFAULT_TIMEOUT, TOOL_SEPARATOR, ApiOperation, ApiSpec,
    McpSpec,
)
from .checked import CheckedAction, CheckedRule

BUILTINS = ("echo",)                 # built-in MCP servers: `mcp demo { builtin echo }`
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_PARAM_PLACES = ("path", "query", "header")
_TOOL_FIELDS = "server, tool, arg(\"a.b\"), key, ip, header(\"x\"), metadata.NAME, hour, weekday"
_MAX_REF_DEPTH = 32


class ToolChecks:
    """Mixed into the checker first, so its _field/_compare/_action see every rule and pass model
    rules' own checks on. Needs self.env, self.error, self.warn, self._value, self._headers."""

    rule_scope = "model"             # model | tools: which kind of rule is being checked

    # ---- declarations -----------------------------------------------------------------------

    def _servers(self, decls) -> dict:
        seen: dict[str, Location] = {}
        out: dict = {}
        for decl in decls:
            if self._duplicate("server", decl.name, decl.loc, seen):
                continue
            if TOOL_SEPARATOR in decl.name:
                self.error("bad-server-name", f"server name '{decl.name}' contains '{TOOL_SEPARATOR}'",
                           decl.loc, hint=f"tools are named SERVER{TOOL_SEPARATOR}TOOL: use single "
                                          "underscores or dashes in a server name")
            out[decl.name] = self._mcp(decl) if decl.kind == "mcp" else self._api(decl)
        return out

    def _server_settings(self, decl: ast.ServerDecl) -> dict:
        opts: dict = {}
        set_at: dict = {}
        for s in decl.settings:
            if not self._once(decl.settings, set_at, s):
                continue
            if s.name == "url":
                opts["url"] = self._value(s.args[0], False, "url")
            elif s.name == "api_key" and isinstance(s.args[0], ast.KeyPool):
                self.error("key-pool", f"api '{decl.name}' takes one api_key; key pools are for providers", s.loc)
            elif s.name == "api_key":
                opts["api_key"] = self._value(s.args[0], True, f"the api_key of api '{decl.name}'")
            elif s.name == "headers":
                opts["headers"] = tuple(self._headers(s))
            elif s.name in ("timeout", "cooldown"):
                self._timing(s, opts)
            else:
                opts[s.name] = s.args[0]
                opts[f"{s.name}_loc"] = s.loc
        return opts

    def _mcp(self, decl: ast.ServerDecl) -> McpSpec:
        opts = self._server_settings(decl)
        builtin = opts.get("builtin")
        if builtin is not None and builtin not in BUILTINS:
            self.error("bad-builtin", f"unknown built-in server '{builtin}'", opts["builtin_loc"],
                       hint=f"use {', '.join(BUILTINS)}")
        if builtin is None and "url" not in opts:
            self.error("missing-url", f"mcp server '{decl.name}' needs a url", decl.loc,
                       hint='add url "http://HOST:PORT/mcp" (streamable HTTP), or builtin echo')
        elif builtin is not None and "url" in opts:
            self.error("bad-builtin", f"mcp server '{decl.name}' is built in: it takes no url",
                       opts["builtin_loc"])
        return McpSpec(decl.name, opts.get("url"), opts.get("headers", ()),
                       opts.get("timeout", DEFAULT_TIMEOUT), opts.get("cooldown", DEFAULT_COOLDOWN),
                       opts.get("failures", DEFAULT_FAILURES), builtin)

    def _api(self, decl: ast.ServerDecl) -> ApiSpec:
        opts = self._server_settings(decl)
        if "url" not in opts:
            self.error("missing-url", f"api '{decl.name}' needs a url", decl.loc,
                       hint='add url "https://HOST" (the base URL its operations are called on)')
        operations, where = (), ""
        if "openapi" not in opts:
            self.error("bad-openapi", f"api '{decl.name}' needs an openapi document", decl.loc,
                       hint='add openapi "NAME.openapi.json" (relative to this file)')
        else:
            where = os.path.join(os.path.dirname(decl.loc.file), opts["openapi"])
            operations = self._operations(where, opts["openapi_loc"])
        url = (opts.get("url") or "").rstrip("/")
        return ApiSpec(decl.name, url, operations, opts.get("api_key"), opts.get("headers", ()),
                       opts.get("timeout", DEFAULT_TIMEOUT), opts.get("cooldown", DEFAULT_COOLDOWN),
                       opts.get("failures", DEFAULT_FAILURES), where)

    def _operations(self, path: str, loc: Location) -> tuple[ApiOperation, ...]:
        try:
            with open(path, "rb") as f:
                doc = orjson.loads(f.read())
        except OSError as exc:
            self.error("bad-openapi", f"cannot read '{path}': {exc.strerror or exc}", loc)
            return ()
        except orjson.JSONDecodeError as exc:
            self.error("bad-openapi", f"'{path}' is not valid JSON: {exc}", loc,
                       hint="the OpenAPI document is read as JSON (convert YAML with any converter)")
            return ()
        if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
            self.error("bad-openapi", f"'{path}' is not an OpenAPI 3 document (no 'paths')", loc)
            return ()
        try:
            operations = read_operations(doc)
        except ValueError as exc:
            self.error("bad-openapi", f"'{path}': {exc}", loc)
            return ()
        if not operations:
            self.warn("no-tools", f"'{path}' has no operation with an operationId: the api has no tools",
                      loc)
        return operations

    def _key_tools(self, decls) -> None:
        """Each glob of a key's `tools` must be able to match some tool: an api's operation, or
        (known only at run time) a tool of an mcp server whose name it can match."""
        apis = [s for s in self.servers.values() if s.kind == "api"]
        api_tools = [name for s in apis for name in s.tool_names()]
        mcps = [s.name for s in self.servers.values() if s.kind == "mcp"]
        for decl in decls:
            for s in decl.settings:
                if s.name != "tools":
                    continue
                for glob, loc in s.args:
                    if any(fnmatchcase(t, glob) for t in api_tools):
                        continue
                    server_part = glob.split(TOOL_SEPARATOR, 1)[0] if TOOL_SEPARATOR in glob else glob
                    if any(fnmatchcase(m, server_part) or fnmatchcase(m + TOOL_SEPARATOR, glob)
                           for m in mcps):
                        continue
                    close = difflib.get_close_matches(glob, api_tools, n=1)
                    self.error("unknown-tool", f"'{glob}' matches no tool of the declared servers", loc,
                               hint=f"did you mean '{close[0]}'?" if close
                               else f"tools are named SERVER{TOOL_SEPARATOR}TOOL, e.g. 'billing__get_*'")

    # ---- tool rules -------------------------------------------------------------------------

    def _tool_rules(self, rules, model_rules) -> tuple[CheckedRule, ...]:
        names = {r.name: r.loc for r in model_rules}
        for rule in rules:
            if rule.name in names:
                self.error("duplicate-rule", f"rule '{rule.name}' is already declared at {names[rule.name]}",
                           rule.loc)
        self.rule_scope = "tools"
        try:
            return self._rules(rules)
        finally:
            self.rule_scope = "model"

    def _field(self, f: ast.Field) -> str | None:
        d = FIELDS.get(f.name)
        scope = "tool" if self.rule_scope == "tools" else "model"
        if d is not None and d.scope not in ("both", scope):
            if scope == "tool":
                self.error("rule-scope", f"'{f.text()}' is a field of model rules, not of tool rules",
                           f.loc, hint=f"a tool rule reads {_TOOL_FIELDS}")
            else:
                self.error("rule-scope", f"'{f.text()}' is a field of tool rules", f.loc,
                           hint="write the rule as `rule NAME for tools { ... }`")
            return None
        return super()._field(f)

    def _compare(self, e: ast.Compare) -> str | None:
        kind = super()._compare(e)
        if self.rule_scope == "tools" and isinstance(e.left, ast.Field) and e.left.name == "server":
            values = (e.right,) if isinstance(e.right, ast.Literal) else getattr(e.right, "items", ())
            for value in values:
                if value.type == "string" and value.value not in self.servers:
                    close = difflib.get_close_matches(value.value, list(self.servers), n=1)
                    self.error("unknown-server", f"unknown server '{value.value}'", value.loc,
                               hint=f"did you mean '{close[0]}'?" if close
                               else "declare it with mcp NAME { ... } or api NAME { ... }")
        return kind

    def _action(self, rule: ast.Rule, index: int, a) -> CheckedAction | None:
        if self.rule_scope != "tools":
            return self._model_action(rule, index, a)
        if isinstance(a, ast.Hide):
            return CheckedAction("hide", True, loc=a.loc)
        if isinstance(a, ast.Deny):
            if a.status is not None:
                self.error("rule-scope", "a tool rule's deny takes a message, not a status", a.status_loc,
                           hint='write deny "why" (the agent gets it as a tool error)')
            message = a.message if a.message is not None else f"tool call denied by rule '{rule.name}'"
            return CheckedAction("deny", message, loc=a.loc)
        if isinstance(a, ast.Limit):
            if a.kind != "calls":
                self.error("rule-scope", f"a tool rule limits calls, not {a.kind}", a.loc,
                           hint="write limit calls N per DURATION [by ...]")
            elif a.else_route is not None:
                self.error("rule-scope", "a tool rule's limit has no 'else route'", a.else_route.loc)
            return super()._action(rule, index, a)
        if isinstance(a, (ast.Route, ast.Cache, ast.Deadline)):
            word = {ast.Route: "route", ast.Cache: "cache", ast.Deadline: "deadline"}[type(a)]
            self.error("rule-scope", f"'{word}' is an action of model rules, not of tool rules", a.loc,
                       hint="a tool rule's actions: deny, hide, limit calls, timeout, retry, tag, log")
            return None
        return super()._action(rule, index, a)

    def _model_action(self, rule: ast.Rule, index: int, a) -> CheckedAction | None:
        if isinstance(a, ast.Hide):
            self.error("rule-scope", "'hide' is an action of tool rules", a.loc,
                       hint="write the rule as `rule NAME for tools { ... }`")
            return None
        if isinstance(a, ast.Deny) and a.status is None:
            self.error("deny-status", "a model rule's deny needs a status", a.loc,
                       hint='write deny 403 "why"')
            return None
        if isinstance(a, ast.Limit) and a.kind == "calls":
            self.error("rule-scope", "'limit calls' is for tool rules", a.loc,
                       hint="a model rule limits requests, tokens or cost")
            return None
        return super()._action(rule, index, a)


# ---- OpenAPI operations as tools ----------------------------------------------------------

def read_operations(doc: dict) -> tuple[ApiOperation, ...]:
    """Every operation with an operationId; its input schema joins the parameters and the JSON
    request body (an object body's properties join the parameters; any other body is `body`)."""
    out, seen = [], set()
    for path, item in doc["paths"].items():
        if not isinstance(item, dict):
            continue
        shared = item.get("parameters") or []
        for method in _METHODS:
            op = item.get(method)
            if not isinstance(op, dict) or not isinstance(op.get("operationId"), str):
                continue
            name = op["operationId"]
            if name in seen:
                raise ValueError(f"operationId '{name}' is used twice")
            seen.add(name)
            out.append(_operation(doc, path, method, op, shared))
    return tuple(out)


def _operation(doc: dict, path: str, method: str, op: dict, shared: list) -> ApiOperation:
    properties, required, params = {}, [], {}
    for raw in [*shared, *(op.get("parameters") or [])]:
        p = resolve(doc, raw)
        if not isinstance(p, dict) or p.get("in") not in _PARAM_PLACES or not isinstance(p.get("name"), str):
            continue
        params[p["name"]] = p["in"]
        schema = resolve(doc, p.get("schema") or {"type": "string"})
        if p.get("description") and isinstance(schema, dict):
            schema = {**schema, "description": p["description"]}
        properties[p["name"]] = schema
        if p.get("required") or p["in"] == "path":
            required.append(p["name"])
    body = ""
    request = resolve(doc, op.get("requestBody") or {})
    content = request.get("content") if isinstance(request, dict) else None
    media = content.get("application/json") if isinstance(content, dict) else None
    if isinstance(media, dict):
        schema = resolve(doc, media.get("schema") or {})
        fields = schema.get("properties") if isinstance(schema, dict) else None
        if isinstance(fields, dict) and not (set(fields) & set(properties)):
            body = "fields"
            properties.update({k: resolve(doc, v) for k, v in fields.items()})
            required.extend(r for r in schema.get("required") or () if isinstance(r, str))
        else:
            body = "value"
            properties["body"] = schema
            if request.get("required"):
                required.append("body")
    input_schema = {"type": "object", "properties": properties}
    if required:
        input_schema["required"] = list(dict.fromkeys(required))
    description = op.get("description") or op.get("summary") or f"{method.upper()} {path}"
    return ApiOperation(op["operationId"], method.upper(), path, tuple(params.items()), body,
                        str(description), orjson.dumps(input_schema).decode())


def resolve(doc: dict, node, depth: int = 0):
    """A local `$ref` ("#/components/schemas/X") replaced by what it names, recursively."""
    if depth > _MAX_REF_DEPTH:
        raise ValueError("$ref nesting is too deep (a reference cycle?)")
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith("#/"):
                raise ValueError(f"only local references are supported, not '{ref}'")
            target = doc
            for step in ref[2:].split("/"):
                step = step.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or step not in target:
                    raise ValueError(f"'{ref}' names nothing in the document")
                target = target[step]
            return resolve(doc, target, depth + 1)
        return {k: resolve(doc, v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(doc, v, depth + 1) for v in node]
    return node
