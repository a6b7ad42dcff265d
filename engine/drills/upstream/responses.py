"""The fake openai-format upstream's /v1/responses and /v1/completions: the chat answer (tool
calls included, see toolcalls.py) in those shapes, so agents' tool loops run offline."""
from __future__ import annotations

from types import SimpleNamespace

import orjson

from ...gateway.ingress import RESPONSES
from ...gateway.providers import echo
from ...gateway.providers.base import DONE
from . import answers


def routes(app) -> dict:
    """The paths this module serves, bound to the fake upstream `app` (its faults and pacing)."""
    async def responses(send, receive, request: dict) -> None:
        if not isinstance(request.get("model"), str) or request.get("input") is None:
            await app._error(send, 400, "'model' and 'input' are required")
        elif request.get("stream"):
            await app._stream(send, receive, responses_frames(request))
        else:
            await app._send_json(send, 200, responses_answer(request))

    async def completions(send, receive, request: dict) -> None:
        if not isinstance(request.get("model"), str) or request.get("prompt") is None:
            await app._error(send, 400, "'model' and 'prompt' are required")
        elif request.get("stream"):
            await app._stream(send, receive, completion_frames(request))
        else:
            await app._send_json(send, 200, completion_answer(request))

    return {"/responses": responses, "/completions": completions}


# ---- /v1/responses -----------------------------------------------------------------------------

def responses_answer(request: dict) -> dict:
    chat, _, _ = RESPONSES.to_chat(request)
    return RESPONSES.from_chat(answers.openai_completion(chat), request, request["model"])


def chat_chunks(answer: dict) -> list[dict]:
    """A chat completion as the chunks that stream it (arguments in two deltas), then its usage."""
    head = {k: answer[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    choice = answer["choices"][0]
    message = choice["message"]
    chunks = [{"role": "assistant", "content": piece} for piece in echo.split_pieces(message["content"])] \
        if message.get("content") else [{"role": "assistant", "content": ""}]
    for k, call in enumerate(message.get("tool_calls") or ()):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        chunks.append({"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                       "function": {"name": call["function"]["name"], "arguments": arguments[:half]}}]})
        chunks.append({"tool_calls": [{"index": k, "function": {"arguments": arguments[half:]}}]})
    out = [{**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in chunks]
    out.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    out.append({**head, "choices": [], "usage": answer["usage"]})
    return out


def responses_frames(request: dict) -> list[bytes]:
    chat, _, _ = RESPONSES.to_chat(request)
    translator = RESPONSES.stream_translator(request, request["model"], SimpleNamespace(usage=None))
    frames = []
    for chunk in chat_chunks(answers.openai_completion(chat)):
        frames += translator.feed(chunk)
    return frames + translator.close()


# ---- /v1/completions ---------------------------------------------------------------------------

def _prompt_text(request: dict) -> str:
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else "".join(p for p in prompt if isinstance(p, str)) \
        if isinstance(prompt, list) else ""


def completion_answer(request: dict) -> dict:
    text = "echo: " + _prompt_text(request)
    prompt, done = echo.estimate_tokens(_prompt_text(request)), echo.estimate_tokens(text)
    return {"id": "cmpl-echo", "object": "text_completion", "created": echo.CREATED, "model": request["model"],
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}}


def completion_frames(request: dict) -> list[bytes]:
    answer = completion_answer(request)
    head = {k: answer[k] for k in ("id", "object", "created", "model")}
    pieces = echo.split_pieces(answer["choices"][0]["text"])
    chunks = [{**head, "choices": [{"text": p, "index": 0, "logprobs": None,
                                    "finish_reason": "stop" if i == len(pieces) - 1 else None}]}
              for i, p in enumerate(pieces)]
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [DONE]
