"""The API shapes clients send besides chat and embeddings: each one validated, normalised to the
fields the policy reads, and forwarded as sent or translated through chat completions."""
from __future__ import annotations

from .common import Exchange, Ingress
from .completions import CompletionsIngress
from .messages import MessagesIngress
from .responses import ResponsesIngress

RESPONSES, MESSAGES, COMPLETIONS = ResponsesIngress(), MessagesIngress(), CompletionsIngress()

__all__ = ["Exchange", "Ingress", "RESPONSES", "MESSAGES", "COMPLETIONS"]
