"""One MCP client session per `mcp` server (the official SDK over streamable HTTP), kept open in a
task of its own, re-established after a failure, its tool list refreshed on
notifications/tools/list_changed and on reload; and the built-in demo server."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

import httpx
import mcp.types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError

from ..lang.spec import McpSpec

log = logging.getLogger("edgerules.tools")

RECONNECT_FIRST = 0.2      # seconds before the first reconnection attempt, doubled up to:
RECONNECT_MAX = 5.0
CONNECT_TIMEOUT = 10.0     # an HTTP exchange of the session (initialize, tools/list)
SSE_READ_TIMEOUT = 300.0   # the server's stream of notifications may stay quiet this long


class ToolFailure(Exception):
    """A call that did not reach an answer: the server is down, the connection broke, it timed
    out, or it answered 5xx. `kind` is connect | timeout | 5xx | status (retry on matches it)."""

    def __init__(self, message: str, kind: str = "connect", status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status


class McpUpstream:
    """The gateway as an MCP client of one server."""

    def __init__(self, spec: McpSpec):
        self.spec = spec
        self.tools: list[types.Tool] = []
        self.session: ClientSession | None = None
        self.connected = asyncio.Event()
        self._dead = asyncio.Event()       # set when the current session ended
        self._refresh = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mcp {self.spec.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def refresh(self) -> None:
        """Ask for the tool list again (a reload, or the server said it changed)."""
        self._refresh.set()

    async def _run(self) -> None:
        delay = RECONNECT_FIRST
        while True:
            try:
                await self._session()
                delay = RECONNECT_FIRST
            except asyncio.CancelledError:
                raise
            except BaseException as exc:   # an ExceptionGroup from the transport's task group
                reason = _reason(exc)
                # Once a state: a server that stays down is retried every few seconds.
                (log.warning if reason != self.last_error else log.debug)(
                    "mcp server '%s' unreachable: %s", self.spec.name, reason)
                self.last_error = reason
            finally:
                self.session = None
                self.connected.clear()
                self._dead.set()
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    async def _session(self) -> None:
        async def on_message(message) -> None:
            if isinstance(message, types.ServerNotification) and \
                    isinstance(message.root, types.ToolListChangedNotification):
                self._refresh.set()

        # No proxy from the environment: the servers are the policy's, reached as written.
        client = httpx.AsyncClient(headers=dict(self.spec.headers), trust_env=False, follow_redirects=False,
                                   timeout=httpx.Timeout(CONNECT_TIMEOUT, read=SSE_READ_TIMEOUT))
        async with client, streamable_http_client(self.spec.url, http_client=client) as (r, w, _):
            async with ClientSession(r, w, message_handler=on_message) as session:
                await asyncio.wait_for(session.initialize(), CONNECT_TIMEOUT)
                self.tools = await self._list(session)
                self._dead = asyncio.Event()
                self.session = session
                self.connected.set()
                self.last_error = None
                log.info("mcp server '%s' connected: %d tools", self.spec.name, len(self.tools))
                while True:
                    await self._refresh.wait()
                    self._refresh.clear()
                    self.tools = await self._list(session)

    @staticmethod
    async def _list(session: ClientSession) -> list[types.Tool]:
        tools, cursor = [], None
        while True:
            page = await asyncio.wait_for(session.list_tools(cursor=cursor) if cursor else session.list_tools(),
                                          CONNECT_TIMEOUT)
            tools.extend(page.tools)
            cursor = page.nextCursor
            if not cursor:
                return tools

    async def call(self, tool: str, arguments: dict, timeout: float) -> types.CallToolResult:
        session = self.session
        if session is None:
            raise ToolFailure(f"mcp server '{self.spec.name}' is not connected"
                              + (f" ({self.last_error})" if self.last_error else ""))
        dead = self._dead
        call = asyncio.ensure_future(session.call_tool(tool, arguments,
                                                       read_timeout_seconds=timedelta(seconds=timeout)))
        ended = asyncio.ensure_future(dead.wait())
        try:
            done, _ = await asyncio.wait({call, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if call in done:
            try:
                return call.result()
            except McpError as exc:
                if exc.error.code == types.CONNECTION_CLOSED:
                    raise ToolFailure(f"mcp server '{self.spec.name}' closed the connection during the call") from None
                if "timed out" in exc.error.message.lower():
                    raise ToolFailure(f"mcp server '{self.spec.name}' did not answer in time", "timeout") from None
                return _text(exc.error.message, True)   # an answer: the server refused the call
            except Exception as exc:
                raise ToolFailure(f"mcp server '{self.spec.name}': {_reason(exc)}") from None
        call.cancel()
        if ended in done:
            raise ToolFailure(f"mcp server '{self.spec.name}' closed the connection during the call")
        raise ToolFailure(f"mcp server '{self.spec.name}' did not answer within {timeout:g}s", "timeout")


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class BuiltinEcho:
    """`mcp NAME { builtin echo }`: a tool server inside the gateway, for offline demos and tests."""

    TOOLS = [
        types.Tool(name="echo", description="Answers its text.",
                   inputSchema={"type": "object", "properties": {"text": {"type": "string"}},
                                "required": ["text"]}),
        types.Tool(name="add", description="Adds two numbers.",
                   inputSchema={"type": "object", "properties": {"a": {"type": "number"},
                                                                 "b": {"type": "number"}},
                                "required": ["a", "b"]}),
        types.Tool(name="admin_stats", description="How many calls this server answered.",
                   inputSchema={"type": "object", "properties": {}}),
    ]

    def __init__(self, spec: McpSpec):
        self.spec = spec
        self.tools = list(self.TOOLS)
        self.calls = 0
        self.connected = asyncio.Event()
        self.connected.set()
        self.last_error = None

    def start(self) -> None:
        pass

    def refresh(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def call(self, tool: str, arguments: dict, timeout: float) -> types.CallToolResult:
        self.calls += 1
        if tool == "echo":
            text = arguments.get("text")
            return _text(text if isinstance(text, str) else str(text), not isinstance(text, str))
        if tool == "add":
            a, b = arguments.get("a"), arguments.get("b")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
                return _text("a and b must be numbers", True)
            return _text(str(a + b))
        if tool == "admin_stats":
            return _text(f"{self.calls} calls")
        return _text(f"unknown tool '{tool}'", True)


def _text(text: str, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=error)


def build_mcp(spec: McpSpec):
    return BuiltinEcho(spec) if spec.builtin else McpUpstream(spec)
