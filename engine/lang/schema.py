"""The request fields a policy can read: their types, and how a request provides them.

One table serves the checker (names and types), the code generator (an extraction snippet per
field) and the interpreter (an extraction function per field), so the two engines cannot drift.
"""
from __future__ import annotations

import functools
import ipaddress
import time
from dataclasses import dataclass
from typing import Callable

import orjson


@dataclass(frozen=True, slots=True)
class FieldDef:
    name: str
    type: str              # string | number | bool
    form: str              # plain | call (header("x")) | dotted (metadata.x)
    nullable: bool         # may be missing: then every comparison with it is false
    doc: str
    scope: str = "model"   # model | tool | both: the rules that may read it


FIELDS: dict[str, FieldDef] = {f.name: f for f in (
    FieldDef("model", "string", "plain", False, "the requested model"),
    FieldDef("stream", "bool", "plain", False, "the request asked for a stream"),
    FieldDef("temperature", "number", "plain", True, "as sent"),
    FieldDef("max_tokens", "number", "plain", True, "as sent"),
    FieldDef("input_tokens", "number", "plain", False, "estimated tokens of the prompt"),
    FieldDef("messages", "number", "plain", False, "how many messages"),
    FieldDef("user", "string", "plain", False, "the request's user field"),
    FieldDef("key", "string", "plain", False, "name of the authenticated key", "both"),
    FieldDef("path", "string", "plain", False, "the HTTP path"),
    FieldDef("method", "string", "plain", False, "the HTTP method"),
    FieldDef("ip", "string", "plain", False, "the client address", "both"),
    FieldDef("header", "string", "call", False, "a request header, \"\" when absent", "both"),
    FieldDef("metadata", "string", "dotted", False, "from the x-edgerules-metadata header", "both"),
    FieldDef("hour", "number", "plain", False, "UTC hour, 0-23", "both"),
    FieldDef("weekday", "number", "plain", False, "UTC weekday, 0 (Monday) - 6", "both"),
    FieldDef("tools", "list", "plain", False, "names of the tools the request offers: \"shell\" in tools"),
    FieldDef("forces_tool", "bool", "plain", False, "tool_choice makes the model call a tool"),
    FieldDef("response_format", "string", "plain", False,
             "text, json_object or json_schema; \"\" when the request asks for none"),
    FieldDef("body", "any", "dotted", True,
             "any body field by path (body.metadata.team), typed by what it is compared with"),
    FieldDef("server", "string", "plain", False, "the tool's server or api, as declared", "tool"),
    FieldDef("tool", "string", "plain", False, "the tool's own name on its server", "tool"),
    FieldDef("arg", "any", "call", True,
             "a call argument by path (arg(\"a.b\")), typed by what it is compared with", "tool"),
)}

METADATA_HEADER = "x-edgerules-metadata"

# The arguments of every decision function, compiled or interpreted.
DECIDE_ARGS = ("body", "headers", "key", "path", "method", "ip", "now")
# The arguments of every tool decision function (tool rules never see a model request).
DECIDE_TOOL_ARGS = ("server", "tool", "args", "headers", "key", "ip", "now")


def field_names() -> list[str]:
    """Every spelling a user may write, for "did you mean" suggestions."""
    out = []
    for f in FIELDS.values():
        out.append(f'{f.name}("...")' if f.form == "call" else f"{f.name}.NAME" if f.form == "dotted" else f.name)
    return out


# ---- helpers the generated code and the interpreter share ----------------------------------

def estimate_tokens(body: dict) -> int:
    """A cheap estimate of prompt tokens: about four characters a token, plus framing."""
    chars, count = 0, 0
    messages = body.get("messages")
    if messages.__class__ is list:
        count = len(messages)
        for msg in messages:
            content = msg.get("content") if msg.__class__ is dict else None
            if content.__class__ is str:
                chars += len(content)
            elif content.__class__ is list:
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
    if "input" in body:
        inp = body["input"]
        if isinstance(inp, str):
            chars += len(inp)
        elif isinstance(inp, list):
            chars += sum(len(x) for x in inp if isinstance(x, str))
    if "prompt" in body and isinstance(body["prompt"], str):
        chars += len(body["prompt"])
    return (chars + 3) // 4 + 3 * count


MEMO_ENTRIES = 4096        # texts one matcher remembers
MEMO_TEXT = 256            # longer texts are searched every time: clients choose them, and they recur less
MEMO_CHARS = 256 * 1024    # characters of text one matcher keeps in all


def memo_search(pattern, size: int = MEMO_ENTRIES, longest: int = MEMO_TEXT, budget: int = MEMO_CHARS):
    """pattern.search(text) is not None, remembered per short text: the same few models and header
    values recur, and a dict lookup costs a fraction of a call into RE2. Bounded in entries and
    in characters kept, whatever distinct texts clients send: full, it starts again empty.
    A partial of a module-level function, not a closure, so a compiled policy can be pickled
    (a big reload is prepared in another process)."""
    return functools.partial(_memo_matches, {}, [0], pattern.search, size, longest, budget)


def _memo_matches(cache: dict, held: list, search, size: int, longest: int, budget: int, text: str) -> bool:
    hit = cache.get(text)
    if hit is None:
        hit = search(text) is not None
        n = len(text)
        if n <= longest:
            if len(cache) >= size or held[0] + n > budget:
                cache.clear()
                held[0] = 0
            cache[text] = hit
            held[0] += n
    return hit


def parse_metadata(raw: str | None) -> dict[str, str]:
    """The x-edgerules-metadata header as a dict of strings; a non-string value as its JSON text."""
    if not raw:
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in data.items()}


def metadata_error(raw: str | None) -> str | None:
    """Why the metadata header is unusable, or None when it is fine (or absent)."""
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"header '{METADATA_HEADER}' is not valid JSON"
    return None if isinstance(data, dict) else f"header '{METADATA_HEADER}' must be a JSON object"


def tool_names(body: dict) -> frozenset:
    """The names of the tools offered, whatever the shape: OpenAI chat ({"function": {"name"}}),
    Responses and Anthropic ({"name"})."""
    tools = body.get("tools")
    if tools.__class__ is not list:
        return frozenset()
    names = set()
    for tool in tools:
        if tool.__class__ is dict:
            function = tool.get("function")
            name = function.get("name") if function.__class__ is dict else tool.get("name")
            if name.__class__ is str:
                names.add(name)
    return frozenset(names)


def forces_tool(body: dict) -> bool:
    """tool_choice that leaves the model no choice but a tool call (OpenAI "required" or a named
    function; Anthropic "any" or "tool")."""
    choice = body.get("tool_choice")
    if choice.__class__ is str:
        return choice in ("required", "any")
    if choice.__class__ is dict:
        return choice.get("type") in ("function", "any", "tool")
    return False


def response_format_type(body: dict) -> str:
    """response_format.type (chat) or text.format.type (Responses); "" when absent."""
    fmt = body.get("response_format")
    if fmt.__class__ is not dict:
        text = body.get("text")
        fmt = text.get("format") if text.__class__ is dict else None
    kind = fmt.get("type") if fmt.__class__ is dict else None
    return kind if kind.__class__ is str else ""


def body_path(body: dict, path: tuple):
    """The value at a path of nested objects, or None when a step is missing or not an object."""
    value = body
    for step in path:
        if value.__class__ is not dict:
            return None
        value = value.get(step)
    return value


def body_typed(value, kind: str):
    """value when it has the type a comparison expects, else None (and the comparison is false)."""
    cls = value.__class__
    if kind == "string":
        return value if cls is str else None
    if kind == "number":
        return value if cls is int or cls is float else None
    if kind == "bool":
        return value if cls is bool else None
    return None


def cidr_matcher(items: tuple[str, ...]):
    """ip in [...] where an item is a network ("10.0.0.0/8"): membership, not string equality.
    Items are validated by the checker; an address that does not parse is in no network.
    A partial, not a closure, so a compiled policy can be pickled."""
    networks = tuple(ipaddress.ip_network(i, strict=False) for i in items)
    return functools.partial(_in_networks, networks)


def _in_networks(networks: tuple, ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in networks if net.version == address.version)


def utc_parts(now: float | None) -> time.struct_time:
    return time.gmtime(now)


def count_messages(body: dict) -> int:
    messages = body.get("messages")
    return len(messages) if isinstance(messages, list) else 0


# ---- validation of a request body before it is decided ------------------------------------

_NUMBER = (int, float)


def body_error(body: object, check_messages: bool = True) -> tuple[str, str] | None:
    """(message, param) when a field the policy may read has the wrong type; None when fine."""
    if not isinstance(body, dict):
        return ("the request body must be a JSON object", "")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        return ("'model' must be a string", "model")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return ("'stream' must be a boolean", "stream")
    for name in ("temperature", "max_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, _NUMBER)):
            return (f"'{name}' must be a number", name)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        return ("'user' must be a string", "user")
    messages = body.get("messages") if check_messages else None
    if messages is not None:
        if not isinstance(messages, list):
            return ("'messages' must be an array", "messages")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                return (f"'messages[{i}]' must be an object", f"messages[{i}]")
    return None


@dataclass(frozen=True, slots=True)
class Extractor:
    """How one field is read: a code snippet for generated code, a function for the interpreter."""

    code: str
    read: Callable


def extractor(name: str, arg: str | None) -> Extractor:
    if name == "model":
        return Extractor('body.get("model") or ""', lambda r: r["body"].get("model") or "")
    if name == "stream":
        return Extractor('body.get("stream") is True', lambda r: r["body"].get("stream") is True)
    if name in ("temperature", "max_tokens"):
        return Extractor(f'body.get("{name}")', lambda r: r["body"].get(name))
    if name == "input_tokens":
        return Extractor("_estimate_tokens(body)", lambda r: estimate_tokens(r["body"]))
    if name == "messages":
        return Extractor("_count_messages(body)", lambda r: count_messages(r["body"]))
    if name == "user":
        return Extractor('body.get("user") or ""', lambda r: r["body"].get("user") or "")
    if name in ("server", "tool"):
        return Extractor(name, lambda r: r[name])
    if name == "arg":
        dotted, _, kind = arg.partition("#")
        path = tuple(dotted.split("."))
        if not kind:
            return Extractor(f"_body_path(args, {path!r})", lambda r: body_path(r["args"], path))
        return Extractor(f"_body_typed(_body_path(args, {path!r}), {kind!r})",
                         lambda r: body_typed(body_path(r["args"], path), kind))
    if name in ("key", "path", "method", "ip"):
        return Extractor(name, lambda r: r[name])
    if name == "header":
        low = arg.lower()
        return Extractor(f"headers.get({low!r}, \"\")", lambda r: r["headers"].get(low, ""))
    if name == "metadata":
        return Extractor(f"_meta.get({arg!r}, \"\")",
                         lambda r: parse_metadata(r["headers"].get(METADATA_HEADER)).get(arg, ""))
    if name == "tools":
        return Extractor("_tool_names(body)", lambda r: tool_names(r["body"]))
    if name == "forces_tool":
        return Extractor("_forces_tool(body)", lambda r: forces_tool(r["body"]))
    if name == "response_format":
        return Extractor("_response_format(body)", lambda r: response_format_type(r["body"]))
    if name == "body":
        dotted, _, kind = arg.partition("#")     # "metadata.team#string": see ast.Field.key
        path = tuple(dotted.split("."))
        if not kind:
            return Extractor(f"_body_path(body, {path!r})", lambda r: body_path(r["body"], path))
        return Extractor(f"_body_typed(_body_path(body, {path!r}), {kind!r})",
                         lambda r: body_typed(body_path(r["body"], path), kind))
    if name == "hour":
        return Extractor("_utc.tm_hour", lambda r: utc_parts(r["now"]).tm_hour)
    if name == "weekday":
        return Extractor("_utc.tm_wday", lambda r: utc_parts(r["now"]).tm_wday)
    raise KeyError(name)
