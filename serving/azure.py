"""Azure OpenAI: OpenAI's wire format behind deployment URLs, `api-version` and `api-key`.

With ``responses: native`` the Responses API is served at the resource's
``/openai/v1/responses``, where the body's ``model`` names the Azure deployment.
With ``batches: native`` batches go to the resource's ``/openai/files`` and
``/openai/batches`` (``serving.openai_batches``).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

import msgspec

from serving.base import EngineSpec
from serving.openai_batches import BatchPaths, UpstreamBatches
from serving.openai_http import OpenAIEngine, OpenAIOptions

_AZURE_PATHS = {"chat": "chat/completions", "completion": "completions", "embedding": "embeddings"}


class AzureOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    api_version: str = "2024-10-21"
    # The Azure deployment name; defaults to the deployment's `model`.
    deployment: str | None = None
    stream_usage: bool = True
    # `native`: /v1/responses requests are passed through to the resource's Responses API.
    responses: Literal["translated", "native"] = "translated"
    # Sent as `api-version` on Responses calls; the v1 API needs none.
    responses_api_version: str | None = None
    # `native`: batches are passed through to the resource's Files and Batches APIs
    # (`/openai/files`, `/openai/batches` with `api_version`), lines naming the Azure deployment.
    batches: Literal["gateway", "native"] = "gateway"


class AzureOpenAIEngine(OpenAIEngine):
    provider = "azure"

    def __init__(self, spec: EngineSpec) -> None:
        azure = spec.options if isinstance(spec.options, AzureOptions) else AzureOptions()
        self.azure = azure
        base = EngineSpec(
            name=spec.name,
            provider=spec.provider,
            model=spec.model,
            base_url=spec.base_url,
            api_key=None,
            timeouts=spec.timeouts,
            max_connections=spec.max_connections,
            options=OpenAIOptions(stream_usage=azure.stream_usage, responses=azure.responses, batches=azure.batches),
        )
        super().__init__(base)
        # Azure authenticates with `api-key`, not a bearer token.
        if spec.api_key:
            self._headers["api-key"] = spec.api_key
        deployment = quote(azure.deployment or spec.model, safe="")
        root = spec.base_url.rstrip("/")
        version = f"api-version={quote(azure.api_version, safe='')}"
        self._urls = {kind: f"{root}/openai/deployments/{deployment}/{path}?{version}" for kind, path in _AZURE_PATHS.items()}
        responses_version = azure.responses_api_version
        query = f"?api-version={quote(responses_version, safe='')}" if responses_version else ""
        self._urls["responses"] = f"{root}/openai/v1/responses{query}"
        self._responses_model = azure.deployment or spec.model
        self._models_url = f"{root}/openai/models?{version}"
        if self.batch_api is not None:
            paths = BatchPaths(f"{root}/openai", query=f"?{version}", endpoint_prefix="")
            self.batch_api = UpstreamBatches(self.name, azure.deployment or spec.model, paths, self._require_session, lambda: self._headers)

    def url_for(self, kind: str) -> str:
        return self._urls[kind]

    def models_url(self) -> str:
        return self._models_url
