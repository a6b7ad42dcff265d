"""A misbehaving OpenAI/Anthropic-style upstream for what `edgerules upstream` cannot do: truncated
streams, key echoes, 200s carrying errors, huge bodies and lines, garbage, a slow call that notices
its client leaving. Raw asyncio, so every byte and every write boundary is under control.

The request's `model` picks the behaviour (`up/<behaviour>` in a policy). Run:
    python tests/hostile_upstream.py --port P
GET /_stats answers {"requests", "cancelled", "completed"}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os

STATS = {"requests": 0, "cancelled": 0, "completed": 0}
MB = 1024 * 1024


def chunk(content=None, finish=None, index=0) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {"id": "chatcmpl-h", "object": "chat.completion.chunk", "created": 1, "model": "h",
             "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def completion(content: str) -> bytes:
    return json.dumps({"id": "chatcmpl-h", "object": "chat.completion", "created": 1, "model": "h",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "logprobs": None, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}).encode()


def anthropic_event(kind: str, **fields) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps({"type": kind, **fields}).encode() + b"\n\n"


def split_echo(model: str, key: str, asked: str) -> list[str]:
    """The key (and what the client asked, e.g. a gateway key) echoed in text deltas cut so that
    each secret spans 2 events (`split-key-2`), 3 events (`split-key-3`) or many (`split-key-tokens`)."""
    text = f"Here is {key} and {asked} - the end."
    if model == "split-key-tokens":
        cuts = list(range(3, len(text), 3))
    else:
        offsets = ((2, 1),) if model == "split-key-2" else ((5, 1), (5, 3))   # after len*n/d characters
        cuts = sorted(text.index(s) + len(s) * n // d for s in (key, asked) if s for d, n in offsets)
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def asked_text(request: dict) -> str:
    """The text of a request's `input`, `prompt` or last message: what an echo may repeat."""
    for name in ("input", "prompt"):
        if isinstance(request.get(name), str):
            return request[name]
    messages = request.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    content = last.get("content") if isinstance(last, dict) else ""
    if isinstance(content, list):
        content = "".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return content if isinstance(content, str) else ""


def delta_events(pieces: list[str], path: str) -> list[bytes]:
    """Text deltas framed as the path's API streams them: Messages, Responses, legacy completions
    or chat chunks."""
    text = "".join(pieces)
    if path.endswith("/messages"):
        return [anthropic_event("message_start", message={"id": "msg_h", "type": "message", "role": "assistant",
                                                          "model": "h", "content": [], "stop_reason": None,
                                                          "usage": {"input_tokens": 2, "output_tokens": 0}}),
                anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
                *[anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": p})
                  for p in pieces],
                anthropic_event("content_block_stop", index=0),
                anthropic_event("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None},
                                usage={"output_tokens": len(pieces)}),
                anthropic_event("message_stop")]
    if path.endswith("/responses"):
        head = {"id": "resp_h", "object": "response", "created_at": 1, "model": "h", "status": "in_progress",
                "output": []}
        item = {"id": "msg_h", "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
        done = {**head, "status": "completed", "output": [item],
                "usage": {"input_tokens": 2, "output_tokens": len(pieces), "total_tokens": 2 + len(pieces)}}
        return [anthropic_event("response.created", response=head),
                *[anthropic_event("response.output_text.delta", item_id="msg_h", output_index=0, content_index=0,
                                  delta=p) for p in pieces],
                anthropic_event("response.output_text.done", item_id="msg_h", output_index=0, content_index=0,
                                text=text),
                anthropic_event("response.completed", response=done)]
    if path.endswith("/completions") and not path.endswith("/chat/completions"):   # the legacy API
        return [b"data: " + json.dumps({"id": "cmpl-h", "object": "text_completion", "created": 1, "model": "h",
                                        "choices": [{"index": 0, "text": p, "logprobs": None,
                                                     "finish_reason": None if p else "stop"}]}).encode() + b"\n\n"
                for p in [*pieces, ""]] + [b"data: [DONE]\n\n"]
    return [*[chunk(p) for p in pieces], chunk(finish="stop"), b"data: [DONE]\n\n"]


class Exchange:
    def __init__(self, reader, writer, key: str):
        self.reader, self.writer, self.key = reader, writer, key
        self.asked = ""   # the text of the request's last message (or its `input`)
        self.cookie = ""  # the request's Cookie header

    async def head(self, status: int = 200, ctype: str = "text/event-stream", length: int | None = None,
                   extra: str = "") -> None:
        framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
        self.writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\n{framing}\r\n{extra}"
                          f"connection: close\r\n\r\n".encode())

    async def part(self, data: bytes) -> None:
        """One HTTP chunk, flushed: the gateway reads it apart from the next one."""
        self.writer.write(b"%x\r\n" % len(data) + data + b"\r\n")
        await self.writer.drain()

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")   # a clean end of body
        await self.writer.drain()

    async def whole(self, status: int, body: bytes, ctype="application/json", extra="") -> None:
        await self.head(status, ctype, len(body), extra)
        self.writer.write(body)
        await self.writer.drain()

    async def stream(self, events: list[bytes], pause: float = 0.0) -> None:
        await self.head()
        for event in events:
            await self.part(event)
            if pause:
                await asyncio.sleep(pause)
        await self.end()


async def behave(x: Exchange, model: str, path: str) -> None:
    key = x.key
    if model == "truncated":                 # content, then a clean end: no finish_reason, no [DONE]
        await x.stream([chunk("The answer is"), chunk(" forty-")])
    elif model == "no-done":                 # finished, but the [DONE] never comes
        await x.stream([chunk("The answer is 42."), chunk(finish="stop")])
    elif model == "done-no-finish":          # [DONE] without any finish_reason
        await x.stream([chunk("The answer is"), b"data: [DONE]\n\n"])
    elif model == "anthropic-truncated":
        await x.stream([anthropic_event("message_start", message={"id": "m", "usage": {"input_tokens": 2}}),
                        anthropic_event("content_block_delta", index=0,
                                        delta={"type": "text_delta", "text": "The answer is forty-"})])
    elif model == "anthropic-no-stop-reason":  # message_stop without a message_delta first
        await x.stream([anthropic_event("message_start", message={"id": "m", "usage": {"input_tokens": 2}}),
                        anthropic_event("content_block_delta", index=0,
                                        delta={"type": "text_delta", "text": "The answer is"}),
                        anthropic_event("message_stop")])
    elif model == "error-200":               # 200 whose body is an error echoing the key
        await x.whole(200, json.dumps({"error": {"message": f"invalid key {key}", "type": "auth"}}).encode())
    elif model == "echo-answer":             # a normal answer whose content echoes the key
        await x.whole(200, completion(f"your key is {key}, keep it safe"))
    elif model == "echo-stream":             # the key inside one event, split over two network writes
        event = chunk(f"your key is {key}!")
        at = event.index(key.encode()) + len(key) // 2
        await x.head()
        await x.part(chunk("Hello. "))
        await x.part(event[:at])
        await asyncio.sleep(0.1)
        await x.part(event[at:])
        await x.part(chunk(finish="stop"))
        await x.part(b"data: [DONE]\n\n")
        await x.end()
    elif model in ("split-key-2", "split-key-3", "split-key-tokens"):
        await x.stream(delta_events(split_echo(model, key, x.asked), path))
    elif model in ("long-error-text", "long-error-json"):
        # The key straddles character 300, then comes again and again: wherever a cut falls
        # before redaction, part of a key would show.
        message = "e" * (300 - len(key) // 2) + (key + "g" * 7) * 20
        body = (message.encode() if model == "long-error-text"
                else json.dumps({"error": {"message": message, "type": "server_error"}}).encode())
        await x.whole(500, body, "text/plain" if model == "long-error-text" else "application/json")
    elif model in ("huge-json", "huge-json-chunked"):       # a 50 MB answer
        body = completion("x" * (50 * MB))
        if model == "huge-json":
            await x.whole(200, body)
        else:
            await x.head(200, "application/json")
            for at in range(0, len(body), MB):
                await x.part(body[at:at + MB])
            await x.end()
    elif model in ("anthropic-big", "anthropic-1mb"):   # Anthropic answers the gateway must translate
        text = "z" * ((20 if model == "anthropic-big" else 1) * MB)
        await x.whole(200, json.dumps({"id": "msg_h", "type": "message", "role": "assistant", "model": "h",
                                       "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                       "usage": {"input_tokens": 3, "output_tokens": 5}}).encode())
    elif model == "big-json":                # 8 MB: under the cap, passed through
        await x.whole(200, completion("y" * (8 * MB)))
    elif model == "huge-line":               # a 48 MB event line without a delimiter
        await x.head()
        await x.part(chunk("start"))
        line = b"data: " + b"x" * MB
        for _ in range(48):
            await x.part(line)
            line = b"x" * MB
        await x.end()
    elif model == "many-chunks":             # 100,000 small events, for assembling in linear time
        await x.head()
        events = [chunk("ab") for _ in range(100_000)]
        for at in range(0, len(events), 1000):
            await x.part(b"".join(events[at:at + 1000]))
        await x.part(chunk(finish="stop") + b"data: [DONE]\n\n")
        await x.end()
    elif model == "sets-cookie":             # sets a cookie, and says which cookie the request carried
        await x.whole(200, completion(f"cookie={x.cookie or 'none'}"),
                      extra="set-cookie: tenant=alice-session-secret; Path=/\r\n")
    elif model == "garbage":
        await x.whole(200, os.urandom(4096), "application/json")
    elif model == "rate-limited":
        await x.whole(429, json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}}).encode(),
                      extra="retry-after: 7\r\n")
    elif model == "unavailable":
        await x.whole(503, json.dumps({"error": {"message": "overloaded", "type": "server_error"}}).encode(),
                      extra="retry-after: 3\r\n")
    elif model == "slow":                    # answers after 30 s unless the client leaves first
        try:
            await asyncio.wait_for(x.reader.read(1), 30)
            STATS["cancelled"] += 1          # EOF: the gateway closed the connection
            return
        except TimeoutError:
            await x.whole(200, completion("late"))
    else:
        await x.whole(404, json.dumps({"error": {"message": f"no behaviour {model!r}"}}).encode())
    STATS["completed"] += 1


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        if not line:
            return
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers = {}
        while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        x = Exchange(reader, writer, headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer "))
        if path in ("/healthz", "/_stats"):
            await x.whole(200, json.dumps(STATS if path == "/_stats" else {"status": "ok"}).encode())
            return
        STATS["requests"] += 1
        request = json.loads(body or b"{}")
        x.asked = asked_text(request)
        x.cookie = headers.get("cookie", "")
        await behave(x, str(request.get("model", "")), path)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
