"""Small MCP servers of the tests (FastMCP over streamable HTTP), run as subprocesses:

    python tests/mcp_servers.py github PORT [TOKEN]
    python tests/mcp_servers.py files PORT

With TOKEN, a request without `Authorization: TOKEN` is refused 401, so a test sees the gateway
send its `headers`. GET /healthz answers 200 once the server listens.
"""
from __future__ import annotations

import sys

import uvicorn
from mcp.server.fastmcp import Context, FastMCP
from starlette.responses import JSONResponse, PlainTextResponse


def github() -> FastMCP:
    server = FastMCP("github", stateless_http=False, log_level="WARNING")

    @server.tool()
    def search_issues(query: str) -> str:
        """Search issues."""
        return f"found 3 issues for {query}"

    @server.tool()
    def search_code(query: str) -> str:
        """Search code."""
        return f"found code for {query}"

    @server.tool()
    def delete_repo(name: str) -> str:
        """Delete a repository."""
        return f"deleted {name}"

    @server.tool()
    def admin_purge() -> str:
        """Purge everything."""
        return "purged"

    @server.tool()
    async def add_tool(name: str, ctx: Context) -> str:
        """Register a new tool NAME (it answers "NAME here") and tell clients the list changed."""
        def fresh() -> str:
            return f"{name} here"
        server.add_tool(fresh, name=name, description="added at run time")
        await ctx.session.send_tool_list_changed()
        return f"added {name}"

    @server.tool()
    def echo_auth(ctx: Context) -> str:
        """Answers the Authorization header this server received (a leak the gateway must redact)."""
        return "you sent: " + ctx.request_context.request.headers.get("authorization", "")

    return server


def files() -> FastMCP:
    server = FastMCP("files", stateless_http=False, log_level="WARNING")

    @server.tool()
    def read_file(path: str) -> str:
        """Read a file."""
        return f"contents of {path}"

    @server.tool()
    def list_dir(path: str = "/") -> list[str]:
        """List a directory."""
        return [f"{path}a.txt", f"{path}b.txt"]

    return server


def app(server: FastMCP, token: str | None):
    inner = server.streamable_http_app()

    async def asgi(scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await PlainTextResponse("ok")(scope, receive, send)
            return
        if scope["type"] == "http" and token is not None:
            sent = dict(scope["headers"]).get(b"authorization", b"").decode()
            if sent != token:
                await JSONResponse({"error": "bad token"}, status_code=401)(scope, receive, send)
                return
        await inner(scope, receive, send)
    return asgi


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    token = sys.argv[3] if len(sys.argv) > 3 else None
    server = {"github": github, "files": files}[kind]()
    uvicorn.run(app(server, token), host="127.0.0.1", port=port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
