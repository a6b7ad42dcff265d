"""POST /v1/completions: the legacy text completions API, passed through to openai-format
providers; no other format has an equivalent, so elsewhere it is a 400 naming the format."""
from __future__ import annotations

from .common import Ingress, bad, check_types, require_model

_TYPES = {"prompt": (str, list), "max_tokens": (int,), "temperature": (int, float), "top_p": (int, float),
          "n": (int,), "stream": (bool,), "stop": (str, list), "user": (str,), "suffix": (str,),
          "echo": (bool,), "logprobs": (int,), "best_of": (int,), "seed": (int,)}


class CompletionsIngress(Ingress):
    path = "/completions"
    delta_shape = "completions"
    native = frozenset({"openai"})

    def validate(self, body: dict) -> None:
        require_model(body)
        if body.get("prompt") is None:
            raise bad("'prompt' is required", "prompt", "missing_required_parameter")
        check_types(body, _TYPES)

    def to_chat(self, body: dict) -> tuple[dict, list[str], str | None]:
        # The policy reads the body as sent (model, stream, max_tokens, temperature, user; prompt
        # counts towards input_tokens); nothing is translated.
        return body, [], "the legacy completions API"
