"""A bare Starlette + aiohttp pass-through: the floor a Python gateway can reach, for benchmarks.

It forwards POST /v1/chat/completions to one upstream with one shared aiohttp session and no
policy, no validation, no headers of its own. `python -m edgerules.drills.passthrough --upstream URL --port P`.
"""
from __future__ import annotations

import argparse
import contextlib

import aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    target = upstream.rstrip("/") + "/chat/completions"

    @contextlib.asynccontextmanager
    async def lifespan(app):
        app.state.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024))
        yield
        await app.state.session.close()

    async def chat(request: Request) -> Response:
        body = await request.body()
        session: aiohttp.ClientSession = request.app.state.session
        resp = await session.post(target, data=body, headers={"content-type": "application/json"})
        if resp.content_type == "text/event-stream":
            async def relay():
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                finally:
                    resp.release()
            return StreamingResponse(relay(), status_code=resp.status, media_type="text/event-stream")
        data = await resp.read()
        resp.release()
        return Response(data, status_code=resp.status, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/healthz", healthz)], lifespan=lifespan)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m edgerules.drills.passthrough")
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8081/v1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.upstream), host=args.host, port=args.port, loop="uvloop", http="httptools",
                log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
