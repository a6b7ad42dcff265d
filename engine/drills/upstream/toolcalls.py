"""The fake upstream's tool calls, whatever the format: when a request offers tools and its last
message asks (a user turn, not a tool result), the answer calls the first tool (or the forced one;
the first two when the prompt says "parallel"), with arguments built from the tool's schema."""
from __future__ import annotations

import hashlib

import orjson


def example(schema, depth: int = 0):
    """A value that satisfies a (simple) JSON schema: enums, types, required properties."""
    if not isinstance(schema, dict) or depth > 8:
        return "example"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example(schema[key][0], depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    kind = str(kind).lower() if kind else ("object" if "properties" in schema else "string")
    if kind == "object":
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {name: example(sub, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [example(schema.get("items"), depth + 1)]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, "example")


def plan(tools: list[tuple[str, dict]], asks: bool, forced: str | None, prompt: str,
         allowed: bool = True) -> list[tuple[str, dict]]:
    """(name, arguments) of each call the answer makes; empty for a plain text answer."""
    if not tools or not asks or not allowed:
        return []
    schemas = dict(tools)
    if forced is not None:
        return [(forced, example(schemas.get(forced)))]
    chosen = tools[:2] if "parallel" in prompt.lower() and len(tools) > 1 else tools[:1]
    return [(name, example(schema)) for name, schema in chosen]


def call_id(prefix: str, seed, index: int) -> str:
    digest = hashlib.sha1(orjson.dumps(seed, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
    return f"{prefix}{digest[:20]}{index}"


def pieces(text: str, parts: int = 3) -> list[str]:
    """A JSON text cut in a few pieces, as providers stream tool arguments."""
    size = max(1, -(-len(text) // parts))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def dumps(value) -> str:
    return orjson.dumps(value).decode()
