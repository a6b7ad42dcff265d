"""The dashboard at /admin/: three static files shipped in the package, served by the gateway itself.

The page holds no data: it reads /admin/policy, /metrics, /admin/usage and /admin/requests from the
browser, sending the admin token (when one is set) as a Bearer header.
"""
from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TYPES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
         "charts.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# Everything comes from the gateway itself: no script, style or font from anywhere else.
HEADERS = {"content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                      "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
           "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-cache"}


def _load() -> dict[str, bytes]:
    folder = resources.files(__name__)
    return {name: folder.joinpath(name).read_bytes() for name in TYPES}


def routes(guard) -> list[Route]:
    """GET /admin/ and its assets; `guard(request)` answers an error Response, or None to serve."""
    files = _load()

    def serve(name: str) -> Response:
        return Response(files[name], media_type=TYPES[name], headers=HEADERS)

    async def page(request: Request) -> Response:
        return guard(request) or serve("index.html")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files or name == "index.html":
            from ...gateway.errors import GatewayError, error_response
            return error_response(GatewayError(404, f"no such dashboard file: {name!r}", code="not_found"))
        return guard(request) or serve(name)

    return [Route("/admin/", page, methods=["GET"]), Route("/admin", page, methods=["GET"]),
            Route("/admin/assets/{name}", asset, methods=["GET"])]
