"""Azure OpenAI: the OpenAI chat and embeddings shapes on a deployment URL with `api-version`,
authenticated by an `api-key` header."""
from __future__ import annotations

from urllib.parse import quote

from ...lang.spec import ProviderSpec
from .base import HttpProvider, UpstreamResponse, UpstreamStream
from .openai import OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"


class AzureProvider(OpenAIProvider):
    def __init__(self, spec: ProviderSpec):
        HttpProvider.__init__(self, spec, spec.url or "", {"api-key": spec.api_key} if spec.api_key else {})
        self.query = "?api-version=" + quote(spec.api_version or DEFAULT_API_VERSION, safe="")
        self._paths: dict[tuple[str, str], str] = {}

    def path(self, model: str, operation: str) -> str:
        """`/openai/deployments/{deployment}/{operation}?api-version=...`; the deployment is the
        provider's `deployment` setting, else the model name."""
        key = (model, operation)
        found = self._paths.get(key)
        if found is None:
            if len(self._paths) > 1024:
                self._paths.clear()   # model names come from clients: keep the memo bounded
            deployment = quote(self.spec.deployment or model, safe="")
            found = self._paths[key] = f"/openai/deployments/{deployment}/{operation}{self.query}"
        return found

    async def chat(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        return await self.chat_at(self.path(model, "chat/completions"), body, model, timeout)

    async def chat_stream(self, body: dict, model: str, timeout: float) -> UpstreamStream:
        return await self.chat_stream_at(self.path(model, "chat/completions"), body, model, timeout)

    async def embeddings(self, body: dict, model: str, timeout: float) -> UpstreamResponse:
        return await self.embeddings_at(self.path(model, "embeddings"), body, model, timeout)

    async def models(self) -> list[str]:
        return [self.spec.deployment] if self.spec.deployment else []
