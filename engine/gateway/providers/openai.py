"""Any OpenAI-compatible server: requests and answers pass through with only the model replaced."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import aclosing

import aiohttp

from ...lang.spec import ProviderSpec
from .base import DONE, HttpProvider, ProviderError, UpstreamResponse, UpstreamStream, error_message

DEFAULT_URL = "https://api.openai.com/v1"
# A finish_reason with a value (not null): searched in each event only until one is seen.
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"')


class OpenAIProvider(HttpProvider):
    def __init__(self, spec: ProviderSpec):
        headers = {"authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        super().__init__(spec, spec.url or DEFAULT_URL, headers)

    async def chat(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        return await self.chat_at("/chat/completions", body, model, timeout)

    async def chat_stream(self, body: dict, model: str, timeout: float) -> UpstreamStream:
        return await self.chat_stream_at("/chat/completions", body, model, timeout)

    async def embeddings(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        return await self.embeddings_at("/embeddings", body, model, timeout)

    async def chat_at(self, path: str, body: dict, model: str, timeout: float) -> UpstreamResponse:
        payload = {**body, "model": model}
        if payload.get("stream"):
            # chat() promises one JSON answer, whatever the client's body asked for.
            payload["stream"] = False
            payload.pop("stream_options", None)
        raw = await self.post(path, payload, timeout)
        self.check_answer(raw)
        return UpstreamResponse(200, raw)

    async def chat_stream_at(self, path: str, body: dict, model: str, timeout: float) -> UpstreamStream:
        payload = {**body, "model": model, "stream": True}
        resp = await self.post(path, payload, timeout, stream=True)
        if resp.content_type == "application/json":
            resp.close()
            raise self.error(502, f"upstream '{self.spec.name}' answered a stream request with JSON "
                                  f"instead of events", upstream_status=resp.status)
        return UpstreamStream(self._events(resp, timeout), resp.close)

    async def embeddings_at(self, path: str, body: dict, model: str, timeout: float) -> UpstreamResponse:
        raw = await self.post(path, {**body, "model": model}, timeout)
        self.check_answer(raw)
        return UpstreamResponse(200, raw)

    async def _events(self, resp: aiohttp.ClientResponse, timeout: float) -> AsyncIterator[bytes]:
        """One item per network read: the complete events it brought, re-framed, joined.

        A stream is whole only with a finish_reason and then `[DONE]`: one that ends without
        them (cleanly or not) was cut short upstream and ends with an error, never a `[DONE]`
        of the gateway's own that would make a truncated answer look complete.
        """
        done = finished = False
        try:
            # aclosing: when this generator stops early, the reader below releases the connection now.
            async with aclosing(self.sse_batches(resp, timeout)) as batches:
                async for batch in batches:
                    out = []
                    for data in batch:
                        if done:
                            continue   # drained so the connection goes back to the pool
                        if data == b"[DONE]":
                            if not finished:
                                if out:
                                    yield b"".join(out)
                                raise self._cut_short("sent [DONE] before any finish_reason")
                            done = True
                            out.append(DONE)
                        elif data.startswith((b'{"error"', b'{ "error"')):
                            if out:
                                yield b"".join(out)   # what came before the error is delivered
                            message = error_message(data, "error event", self.redactor)
                            raise self.error(502, f"upstream '{self.spec.name}' failed mid-stream: {message}",
                                             kind="stream")
                        else:
                            if not finished and _FINISHED.search(data) is not None:
                                finished = True
                            out.append(b"data: " + data + b"\n\n")
                    if out:
                        yield b"".join(out)
        except ProviderError:
            if not done:
                raise
            return   # the client already has a whole answer
        if not done:
            raise self._cut_short("ended the stream without [DONE]" if finished
                                  else "ended the stream before any finish_reason")

    def _cut_short(self, what: str) -> ProviderError:
        return self.error(502, f"upstream '{self.spec.name}' {what}: the answer is incomplete", kind="stream")
