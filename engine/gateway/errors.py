"""GatewayError and the one function that turns any failure into OpenAI's error shape."""
from __future__ import annotations

import orjson
from starlette.responses import Response

_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "invalid_request_error", 405: "invalid_request_error", 408: "timeout_error",
    409: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
    422: "invalid_request_error", 429: "rate_limit_error",
}


class GatewayError(Exception):
    """A failure that becomes an HTTP answer: status, message, and OpenAI's type/param/code."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        self.headers = dict(headers or {})


def error_body(status: int, message: str, *, type: str | None = None, param: str | None = None,
               code: str | None = None) -> bytes:
    kind = type or _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def error_response(err: GatewayError, headers: dict[str, str] | None = None) -> Response:
    body = error_body(err.status, err.message, type=err.type, param=err.param, code=err.code)
    return Response(body, status_code=err.status, media_type="application/json",
                    headers={**err.headers, **(headers or {})})
