"""Upstream provider clients, picked by a provider's `format`."""
from __future__ import annotations

from ...lang.spec import ProviderSpec
from .anthropic import AnthropicProvider
from .base import Provider, ProviderError, UpstreamResponse, UpstreamStream
from .echo import EchoProvider
from .openai import OpenAIProvider

__all__ = ["build_provider", "Provider", "ProviderError", "UpstreamResponse", "UpstreamStream",
           "OpenAIProvider", "AnthropicProvider", "EchoProvider", "PROVIDER_CLASSES"]

PROVIDER_CLASSES: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "echo": EchoProvider,
}


def build_provider(spec: ProviderSpec) -> Provider:
    try:
        cls = PROVIDER_CLASSES[spec.format]
    except KeyError:
        raise ValueError(f"provider '{spec.name}' has unknown format '{spec.format}' "
                         f"(expected one of: {', '.join(PROVIDER_CLASSES)})") from None
    return cls(spec)
