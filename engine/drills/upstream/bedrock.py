"""What the fake upstream says as Amazon Bedrock: `model/{id}/converse` and `converse-stream` (AWS
event-stream framing), with every request's SigV4 signature recomputed by botocore from the known
test credentials (403 on a mismatch, as AWS answers)."""
from __future__ import annotations

import hmac
import re
import struct
import zlib
from urllib.parse import unquote

import orjson

from ...gateway.providers import echo
from . import toolcalls

PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream)$")
# The credentials the fake accepts unless told others (`--access-key`, `--secret-key`, `--region`).
TEST_ACCESS_KEY = "AKIAEDGERULESTEST000"
TEST_SECRET_KEY = "edgerules/test/secret/key/0000000000000"
TEST_REGION = "us-east-1"
STREAM_TYPE = b"application/vnd.amazon.eventstream"
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$")
_ERRORS = {400: "ValidationException", 403: "AccessDeniedException", 404: "ResourceNotFoundException",
           429: "ThrottlingException", 500: "InternalServerException", 503: "ServiceUnavailableException"}


def error_type(status: int) -> str:
    return _ERRORS.get(status, "InternalServerException")


def error_body(status: int, message: str) -> dict:
    return {"message": message}


def signature_problem(method: str, raw_path: bytes, query: bytes, headers: dict, body: bytes,
                      credentials: tuple[str, str, str]) -> str | None:
    """Why the request's SigV4 signature is not the one the credentials give, or None."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    access_key, secret_key, region = credentials
    match = _AUTH.match(headers.get("authorization", ""))
    if not match:
        return "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' (AWS4-HMAC-SHA256)"
    key, _date, scope_region, service, signed, signature = match.groups()
    if key != access_key:
        return "The security token included in the request is invalid."
    if scope_region != region or service != "bedrock":
        return f"Credential should be scoped to a valid region and service 'bedrock' in '{region}'"
    amz_date = headers.get("x-amz-date")
    if not amz_date:
        return "Missing X-Amz-Date"
    url = "http://" + headers.get("host", "") + raw_path.decode("latin-1")
    if query:
        url += "?" + query.decode("latin-1")
    request = AWSRequest(method=method, url=url, data=body,
                         headers={name: headers[name] for name in signed.split(";") if name in headers})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(access_key, secret_key), "bedrock", region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if not hmac.compare_digest(expected, signature):
        return ("The request signature we calculated does not match the signature you provided. Check your "
                "AWS Secret Access Key and signing method. Consult the service documentation for details.")
    return None


def request_problem(request: dict) -> str | None:
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "1 validation error detected: Value at 'messages' failed to satisfy constraint: Member must not be null"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: must be user or assistant"
        if i and messages[i - 1].get("role") == message["role"]:
            return "A conversation must alternate between user and assistant roles."
        if not message.get("content"):
            return f"messages.{i}.content: must not be empty"
    return None


def _prompt(request: dict) -> tuple[str, bool]:
    last = request["messages"][-1]
    blocks = [b for b in last.get("content") or () if isinstance(b, dict)]
    results = [b["toolResult"] for b in blocks if isinstance(b.get("toolResult"), dict)]
    if results:
        return " ".join(echo.message_text(r.get("content")) for r in results), False
    return "".join(b["text"] for b in blocks if isinstance(b.get("text"), str)), last.get("role") == "user"


def _answer(request: dict) -> tuple[str, list[tuple[str, dict]], str, int]:
    text, asks = _prompt(request)
    config = request.get("toolConfig") or {}
    tools = [(t["toolSpec"]["name"], (t["toolSpec"].get("inputSchema") or {}).get("json"))
             for t in config.get("tools") or () if isinstance(t, dict) and isinstance(t.get("toolSpec"), dict)]
    forced = ((config.get("toolChoice") or {}).get("tool") or {}).get("name")
    calls = toolcalls.plan(tools, asks, forced, text)
    answer, reason = "echo: " + text, "end_turn"
    limit = (request.get("inferenceConfig") or {}).get("maxTokens")
    if not calls and isinstance(limit, int) and limit > 0 and echo.estimate_tokens(answer) > limit:
        answer, reason = answer[:limit * 4], "max_tokens"
    return answer, calls, "tool_use" if calls else reason, echo.estimate_tokens(toolcalls.dumps(request["messages"]))


def _usage(prompt: int, done: int) -> dict:
    return {"inputTokens": prompt, "outputTokens": done, "totalTokens": prompt + done}


def converse(request: dict) -> dict:
    text, calls, reason, prompt = _answer(request)
    if calls:
        content = [{"toolUse": {"toolUseId": toolcalls.call_id("tooluse_", request["messages"], i), "name": name,
                                "input": args}} for i, (name, args) in enumerate(calls)]
    else:
        content = [{"text": text}]
    done = echo.estimate_tokens(toolcalls.dumps(content))
    return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": reason,
            "usage": _usage(prompt, done), "metrics": {"latencyMs": 1}}


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude, its CRC, string headers, payload, message CRC."""
    encoded = b"".join(bytes([len(name)]) + name + b"\x07" + struct.pack(">H", len(value)) + value
                       for name, value in ((k.encode(), v.encode()) for k, v in headers.items()))
    prelude = struct.pack(">II", 16 + len(encoded) + len(payload), len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict) -> bytes:
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
                 orjson.dumps(payload))


def exception_frame(kind: str = "throttlingException", message: str = "injected stream error: throttled") -> bytes:
    return frame({":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"},
                 orjson.dumps({"message": message}))


def stream_frames(request: dict) -> list[bytes]:
    text, calls, reason, prompt = _answer(request)
    frames = [event("messageStart", {"role": "assistant"})]
    produced = ""
    if calls:
        for i, (name, args) in enumerate(calls):
            use = {"toolUseId": toolcalls.call_id("tooluse_", request["messages"], i), "name": name}
            frames.append(event("contentBlockStart", {"contentBlockIndex": i, "start": {"toolUse": use}}))
            arguments = toolcalls.dumps(args)
            produced += arguments
            frames += [event("contentBlockDelta", {"contentBlockIndex": i, "delta": {"toolUse": {"input": piece}}})
                       for piece in toolcalls.pieces(arguments)]
            frames.append(event("contentBlockStop", {"contentBlockIndex": i}))
    else:
        produced = text
        frames += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
                   for piece in echo.split_pieces(text)]
        frames.append(event("contentBlockStop", {"contentBlockIndex": 0}))
    frames.append(event("messageStop", {"stopReason": reason}))
    frames.append(event("metadata", {"usage": _usage(prompt, echo.estimate_tokens(produced)),
                                     "metrics": {"latencyMs": 1}}))
    return frames


def model_id(segment: str) -> str:
    return unquote(segment)
