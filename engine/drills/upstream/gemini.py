"""What the fake upstream says as Gemini: `models/{m}:generateContent`, `:streamGenerateContent`
(SSE), `:batchEmbedContents`, its key check and its error bodies (pure)."""
from __future__ import annotations

import re

import orjson

from ...gateway.providers import echo
from . import toolcalls

PATH = re.compile(r"^/(?:v1beta|v1)/models/([^/:]+):(generateContent|streamGenerateContent|batchEmbedContents)$")
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def error_body(status: int, message: str) -> dict:
    return {"error": {"code": status, "message": message, "status": _STATUS.get(status, "UNKNOWN")}}


def key_problem(headers: dict) -> tuple[int, str] | None:
    if not headers.get("x-goog-api-key"):
        return 403, ("Method doesn't allow unregistered callers (callers without established identity). "
                     "Please use API Key or other form of API consumer identity to call this API.")
    return None


def request_problem(request: dict) -> str | None:
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
            return f"* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model."
        if not content.get("parts"):
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
    return None


def _prompt(request: dict) -> tuple[str, bool]:
    """(the last turn's text, whether it asks: a user turn that is not function results)."""
    last = request["contents"][-1]
    parts = [p for p in last.get("parts") or () if isinstance(p, dict)]
    text = "".join(p["text"] for p in parts if isinstance(p.get("text"), str))
    results = [p["functionResponse"] for p in parts if isinstance(p.get("functionResponse"), dict)]
    if results:
        text = " ".join(toolcalls.dumps(r.get("response")) for r in results)
    return text, last.get("role") == "user" and not results


def _calls(request: dict, text: str, asks: bool) -> list[tuple[str, dict]]:
    tools = [(d["name"], d.get("parameters")) for t in request.get("tools") or () if isinstance(t, dict)
             for d in t.get("functionDeclarations") or () if isinstance(d, dict) and isinstance(d.get("name"), str)]
    config = ((request.get("toolConfig") or {}).get("functionCallingConfig") or {})
    allowed = config.get("allowedFunctionNames") or []
    forced = allowed[0] if config.get("mode") == "ANY" and allowed else None
    return toolcalls.plan(tools, asks, forced, text, config.get("mode") != "NONE")


def _answer(request: dict) -> tuple[list[dict], str, int, int]:
    """(parts, finishReason, prompt tokens, answer tokens)."""
    text, asks = _prompt(request)
    calls = _calls(request, text, asks)
    config = request.get("generationConfig") or {}
    prompt = echo.estimate_tokens(toolcalls.dumps(request["contents"]))
    if calls:
        parts = [{"functionCall": {"name": name, "args": args}} for name, args in calls]
        return parts, "STOP", prompt, echo.estimate_tokens(toolcalls.dumps(parts))
    if config.get("responseMimeType") == "application/json":
        answer = toolcalls.dumps(toolcalls.example(config.get("responseSchema") or {"type": "object"}))
    else:
        answer = "echo: " + text
    reason = "STOP"
    limit = config.get("maxOutputTokens")
    if isinstance(limit, int) and limit > 0 and echo.estimate_tokens(answer) > limit:
        answer, reason = answer[:limit * 4], "MAX_TOKENS"
    return [{"text": answer}], reason, prompt, echo.estimate_tokens(answer)


def _usage(prompt: int, done: int) -> dict:
    return {"promptTokenCount": prompt, "candidatesTokenCount": done, "totalTokenCount": prompt + done}


def generate(request: dict, model: str) -> dict:
    parts, reason, prompt, done = _answer(request)
    count = (request.get("generationConfig") or {}).get("candidateCount") or 1
    candidates = [{"content": {"role": "model", "parts": parts}, "finishReason": reason, "index": i}
                  for i in range(count)]
    return {"candidates": candidates, "usageMetadata": _usage(prompt, done * count), "modelVersion": model,
            "responseId": "gemini-" + toolcalls.call_id("", request["contents"], 0)}


def stream_frames(request: dict, model: str) -> list[bytes]:
    parts, reason, prompt, done = _answer(request)
    pieces = [[p] for p in parts] if "functionCall" in parts[0] else \
        [[{"text": t}] for t in echo.split_pieces(parts[0]["text"])]
    events = []
    for i, chunk in enumerate(pieces):
        candidate = {"content": {"role": "model", "parts": chunk}, "index": 0}
        event = {"candidates": [candidate], "modelVersion": model}
        if i == len(pieces) - 1:
            candidate["finishReason"] = reason
            event["usageMetadata"] = _usage(prompt, done)
        events.append(b"data: " + orjson.dumps(event) + b"\r\n\r\n")
    return events


def error_event() -> bytes:
    return b"data: " + orjson.dumps(error_body(503, "injected stream error: The model is overloaded.")) + b"\r\n\r\n"


def embed(request: dict) -> tuple[int, dict]:
    requests = request.get("requests")
    if not isinstance(requests, list) or not requests:
        return 400, error_body(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    out = []
    for item in requests:
        text = "".join(p.get("text", "") for p in ((item.get("content") or {}).get("parts") or ()))
        dims = item.get("outputDimensionality") or echo.EMBEDDING_DIMENSIONS
        out.append({"values": echo.embeddings({"input": text, "dimensions": dims}, "e")["data"][0]["embedding"]})
    return 200, {"embeddings": out}


def model_list() -> dict:
    return {"models": [{"name": "models/echo", "displayName": "echo",
                        "supportedGenerationMethods": ["generateContent", "streamGenerateContent"]}]}
