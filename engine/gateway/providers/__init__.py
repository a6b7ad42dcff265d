"""Upstream provider clients, picked by a provider's `format`."""
from __future__ import annotations

from ...lang.spec import ProviderSpec
from .anthropic import AnthropicProvider
from .azure import AzureProvider
from .base import Provider, ProviderError, UpstreamResponse, UpstreamStream
from .echo import EchoProvider
from .gemini import GeminiProvider
from .openai import OpenAIProvider

__all__ = ["build_provider", "Provider", "ProviderError", "UpstreamResponse", "UpstreamStream",
           "OpenAIProvider", "AnthropicProvider", "AzureProvider", "GeminiProvider", "EchoProvider",
           "PROVIDER_CLASSES"]

PROVIDER_CLASSES: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "azure": AzureProvider,
    "gemini": GeminiProvider,
    "echo": EchoProvider,
}


def _provider_class(fmt: str) -> type[Provider]:
    if fmt == "bedrock":   # imported on use: it needs botocore, the optional extra `bedrock`
        from .bedrock import BedrockProvider
        return BedrockProvider
    return PROVIDER_CLASSES[fmt]


def build_provider(spec: ProviderSpec) -> Provider:
    try:
        cls = _provider_class(spec.format)
    except KeyError:
        raise ValueError(f"provider '{spec.name}' has unknown format '{spec.format}' "
                         f"(expected one of: {', '.join(PROVIDER_CLASSES)}, bedrock)") from None
    return cls(spec)
