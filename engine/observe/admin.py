"""The admin API on the request log and the limits: /admin/usage, /admin/requests[/{id}], /admin/limits.

server.py routes here behind its admin guard; these handlers only read.
"""
from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..gateway.errors import GatewayError, error_response
from . import query


def _json(data, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _log_of(request: Request):
    request_log = request.app.state.gw.request_log
    if request_log is None:
        raise GatewayError(404, "the request log is off (--log-store none)", code="request_log_off")
    return request_log


def _bad(exc: query.QueryError) -> Response:
    return error_response(GatewayError(400, str(exc), code="invalid_query", param=exc.param))


async def usage(request: Request) -> Response:
    """GET /admin/usage?group_by=key,model&since=7d&until="""
    params = request.query_params
    try:
        request_log = _log_of(request)
        group_by = query.parse_group_by(params.get("group_by"))
        start, end = query.window(params.get("since"), params.get("until"))
    except query.QueryError as exc:
        return _bad(exc)
    except GatewayError as err:
        return error_response(err)
    rows = await query.usage(request_log.store, group_by, start, end)
    return _json({"group_by": group_by, "since": start, "until": end, "data": rows,
                  "log": request_log.status()})


async def requests_page(request: Request) -> Response:
    """GET /admin/requests?key=&model=&kind=&status=&since=&until=&limit=&cursor= (kind: chat, embeddings, tool)"""
    params = request.query_params
    try:
        request_log = _log_of(request)
        start, end = query.window(params.get("since"), params.get("until"), default_since="3650d")
        limit = _whole(params.get("limit"), "limit", 50)
        cursor = _whole(params.get("cursor"), "cursor", None)
        if params.get("status"):
            query.status_clause(params["status"])
        rows = await query.requests(request_log.store, key=params.get("key"), model=params.get("model"),
                                    kind=params.get("kind"), status=params.get("status"), start=start, end=end,
                                    limit=limit, cursor=cursor)
    except query.QueryError as exc:
        return _bad(exc)
    except GatewayError as err:
        return error_response(err)
    more = len(rows) == max(1, min(limit, query.MAX_LIMIT))
    return _json({"data": rows, "next_cursor": str(rows[-1]["seq"]) if rows and more else None})


async def one_request(request: Request) -> Response:
    """GET /admin/requests/{id}"""
    rid = request.path_params["id"]
    try:
        request_log = _log_of(request)
    except GatewayError as err:
        return error_response(err)
    row = await query.request(request_log.store, rid)
    if row is None:
        return error_response(GatewayError(404, f"no request with id {rid!r} in the log", code="not_found"))
    return _json(row)


async def limits(request: Request) -> Response:
    """GET /admin/limits: every live counter and the room left in it."""
    limiter = request.app.state.gw.limiter
    counters = await limiter.counters() if limiter is not None else []
    return _json({"data": counters})


def _whole(text: str | None, param: str, default):
    if text is None or text == "":
        return default
    if not text.isdigit():
        raise query.QueryError(param, f"'{param}' takes a whole number, not {text!r}")
    return int(text)
