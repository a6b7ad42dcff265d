"""`edgerules upstream`: a fake OpenAI- or Anthropic-style provider with fault injection."""
from .app import (FakeUpstream, Faults, anthropic_message, anthropic_stream_events, apply_knobs,
                  build_parser, main, parse_duration)

__all__ = ["FakeUpstream", "Faults", "anthropic_message", "anthropic_stream_events", "apply_knobs",
           "build_parser", "main", "parse_duration"]
