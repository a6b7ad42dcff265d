"""A small HTTP API of the tests with an OpenAPI document, run as a subprocess:

    python tests/openapi_app.py PORT API_KEY

Every call needs `Authorization: Bearer API_KEY` (401 otherwise). GET /healthz answers 200.
GET /echo-auth answers the Authorization header it received: the gateway must redact it.
"""
from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "billing", "version": "1.0"},
    "paths": {
        "/invoices/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {"operationId": "get_invoice", "summary": "Read one invoice",
                    "parameters": [{"name": "currency", "in": "query", "schema": {"type": "string"}}]},
            "delete": {"operationId": "delete_invoice", "summary": "Delete an invoice"},
        },
        "/invoices": {"get": {"operationId": "get_invoices", "summary": "List invoices"}},
        "/refunds": {"post": {"operationId": "refund", "summary": "Refund an invoice", "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Refund"}}}}}},
        "/echo-auth": {"get": {"operationId": "echo_auth", "summary": "What the API received"}},
    },
    "components": {"schemas": {"Refund": {
        "type": "object", "required": ["invoice", "amount"],
        "properties": {"invoice": {"type": "string"}, "amount": {"type": "number"}}}}},
}


def build(api_key: str) -> Starlette:
    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {api_key}"

    async def invoice(request: Request):
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        if request.method == "DELETE":
            return JSONResponse({"deleted": request.path_params["id"]})
        return JSONResponse({"id": request.path_params["id"], "amount": 120,
                             "currency": request.query_params.get("currency", "EUR")})

    async def invoices(request: Request):
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        return JSONResponse({"invoices": ["inv-1", "inv-2"]})

    async def refund(request: Request):
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        body = await request.json()
        return JSONResponse({"refunded": body["amount"], "invoice": body["invoice"]})

    async def echo_auth(request: Request):
        return PlainTextResponse("you sent: " + request.headers.get("authorization", ""))

    async def healthz(request: Request):
        return PlainTextResponse("ok")

    return Starlette(routes=[
        Route("/invoices/{id}", invoice, methods=["GET", "DELETE"]),
        Route("/invoices", invoices, methods=["GET"]),
        Route("/refunds", refund, methods=["POST"]),
        Route("/echo-auth", echo_auth, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])


if __name__ == "__main__":
    uvicorn.run(build(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
