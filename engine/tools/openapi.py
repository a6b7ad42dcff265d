"""An `api`'s OpenAPI operations as MCP tools, called over HTTP with aiohttp."""
from __future__ import annotations

import asyncio
from urllib.parse import quote

import aiohttp
import mcp.types as types
import orjson

from ..lang.spec import ApiOperation, ApiSpec
from .upstream import ToolFailure

MAX_ANSWER = 4 * 1024 * 1024     # bytes of an API's answer passed on to the agent


class ApiUpstream:
    def __init__(self, spec: ApiSpec):
        self.spec = spec
        self.operations = {op.name: op for op in spec.operations}
        self.tools = [types.Tool(name=op.name, description=op.description,
                                 inputSchema=orjson.loads(op.input_schema)) for op in spec.operations]
        self.connected = asyncio.Event()
        self.connected.set()
        self.last_error = None
        self._session: aiohttp.ClientSession | None = None
        headers = dict(spec.headers)
        if spec.api_key:
            headers["authorization"] = f"Bearer {spec.api_key}"
        self._headers = headers

    def start(self) -> None:
        # No cookie jar: a cookie the API set in one agent's answer must not ride on another's call.
        self._session = aiohttp.ClientSession(headers=self._headers, auto_decompress=True,
                                              cookie_jar=aiohttp.DummyCookieJar())

    def refresh(self) -> None:
        pass

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, tool: str, arguments: dict, timeout: float) -> types.CallToolResult:
        op = self.operations.get(tool)
        if op is None:
            return _text(f"unknown tool '{tool}'", True)
        url, query, headers, body = _request(self.spec.url, op, arguments)
        try:
            async with self._session.request(op.method, url, params=query, headers=headers,
                                             data=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                data = await resp.content.read(MAX_ANSWER)
                status = resp.status
        except asyncio.TimeoutError:
            raise ToolFailure(f"api '{self.spec.name}' did not answer within {timeout:g}s", "timeout") from None
        except aiohttp.ClientError as exc:
            raise ToolFailure(f"api '{self.spec.name}' is unreachable: {type(exc).__name__}") from None
        text = data.decode("utf-8", "replace")
        if status >= 500:
            raise ToolFailure(f"api '{self.spec.name}' answered {status}: {text[:200]}", "status", status)
        result = _text(text, status >= 400)
        if status < 400:
            try:
                value = orjson.loads(data)
            except orjson.JSONDecodeError:
                value = None
            if isinstance(value, dict):
                result.structuredContent = value
        return result


def _request(base: str, op: ApiOperation, arguments: dict):
    """(url, query, headers, body bytes or None) of one call: each parameter where the document
    puts it, the other arguments as the JSON body."""
    path, query, headers = op.path, {}, {}
    for name, where in op.params:
        if name not in arguments:
            continue
        value = arguments[name]
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        if where == "path":
            path = path.replace("{" + name + "}", quote(text, safe=""))
        elif where == "query":
            query[name] = "true" if value is True else "false" if value is False else text
        else:
            headers[name] = text
    body = None
    if op.body == "fields":
        names = {n for n, _ in op.params}
        rest = {k: v for k, v in arguments.items() if k not in names}
        body = orjson.dumps(rest)
    elif op.body == "value" and "body" in arguments:
        body = orjson.dumps(arguments["body"])
    if body is not None:
        headers["content-type"] = "application/json"
    return base + path, query, headers, body


def _text(text: str, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=error)
