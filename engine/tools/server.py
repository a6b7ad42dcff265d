"""The MCP endpoint at /mcp: the official SDK's low-level server over its streamable HTTP
transport (stateless: any worker answers any request), behind the gateway's keys."""
from __future__ import annotations

import contextlib
import logging

import mcp.types as types
import orjson
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from ..gateway.errors import GatewayError
from .gateway import Caller

log = logging.getLogger("edgerules.tools")
# The SDK logs every request and session end at INFO: the access log already has one line a call.
logging.getLogger("mcp").setLevel(logging.WARNING)

CALLER = "edgerules.caller"      # where the endpoint leaves the authenticated caller in the scope


def build_server(gw) -> Server:
    server: Server = Server("edgerules", instructions="Tools of the servers and APIs behind this "
                            "gateway, named SERVER__TOOL.")

    def caller() -> Caller:
        return server.request_context.request.scope[CALLER]

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return gw.tools.list_for(caller())

    @server.call_tool(validate_input=False)   # the server behind validates its own arguments
    async def call_tool(name: str, arguments: dict) -> types.CallToolResult:
        try:
            return await gw.tools.call(name, arguments, caller())
        except Exception:   # the SDK would answer the exception's text: it may name a server's secrets
            log.exception("tool call %s failed inside the gateway", name)
            return types.CallToolResult(content=[types.TextContent(type="text", text="internal gateway error")],
                                        isError=True)

    return server


class McpEndpoint:
    """An ASGI app: authenticates with the gateway's keys, then hands the request to the SDK."""

    def __init__(self, gw):
        self.gw = gw
        self.manager = StreamableHTTPSessionManager(app=build_server(gw), stateless=True, json_response=True)

    @contextlib.asynccontextmanager
    async def run(self):
        async with self.manager.run():
            yield

    async def __call__(self, scope, receive, send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        live = self.gw.live
        try:
            key = live.keyring.authenticate(headers.get("authorization"))
        except GatewayError as err:
            await _reply(send, err.status, {"error": {"message": err.message, "type": err.type,
                                                      "param": err.param, "code": err.code}})
            return
        spec = next((k for k in live.policy.keys if k.name == key), None) if key else None
        client = scope.get("client")
        scope[CALLER] = Caller(key, spec, headers, client[0] if client else "")
        await self.manager.handle_request(scope, receive, send)


async def _reply(send, status: int, body: dict) -> None:
    data = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"www-authenticate", b"Bearer")]})
    await send({"type": "http.response.body", "body": data})
