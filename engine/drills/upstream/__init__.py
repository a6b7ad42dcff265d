"""`edgerules upstream`: a fake provider (OpenAI, Anthropic, Azure, Gemini or Bedrock API) with fault injection.

faults.py holds the knobs, answers.py what each format says, app.py the ASGI app, cli.py the
command and its flags.
"""
from .cli import add_arguments, build_parser, main, run
from .faults import Faults, apply_knobs, parse_duration

_LAZY = {"FakeUpstream": "app", "MODELS": "answers", "anthropic_message": "answers",
         "anthropic_stream_events": "answers"}

__all__ = ["Faults", "add_arguments", "apply_knobs", "build_parser", "main", "parse_duration", "run",
           *_LAZY]


def __getattr__(name: str):
    # The app and the answers import the gateway's echo provider (aiohttp, ~0.2 s): `edgerules
    # check` builds the upstream's flags but should not pay for that.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
