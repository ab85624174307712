"""The engines the contract suite runs against, each with what its provider can do.

Engines are built through ``serving.registry`` from raw options, the way the
router builds them from a config file. Remote providers point at in-process
fakes; in-process engines serve real (tiny) models.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from serving.base import Engine, EngineRequest, EngineSpec, Kind
from serving.registry import build_engine, parse_options

OPENAI_KEY = "sk-contract-upstream-key"
AZURE_KEY = "azure-contract-key"
AZURE_DEPLOYMENT = "gpt-4o-contract"
AZURE_API_VERSION = "2024-10-21"
SYSTEM = "You are a helpful assistant. Answer in one short sentence."
QUESTION = "What is the capital of France?"
PROMPT = "The capital of France is"


@dataclass(frozen=True, slots=True)
class Backend:
    """A started engine plus the flags for what its provider (or its fake) supports."""

    name: str
    engine: Engine
    # What goes in the request body's ``model``.
    model: str
    supports_completions: bool = True
    supports_embeddings: bool = True
    # False for an embedding-only deployment, which refuses chat and completions.
    serves_generation: bool = True
    honours_max_tokens: bool = True
    # False when the engine estimates token counts instead of counting them.
    exact_usage: bool = True
    in_process: bool = False
    # An engine and body model the upstream does not serve; None for in-process engines.
    rejecting: tuple[Engine, str] | None = None

    def chat(self, *, stream: bool = False, model: str | None = None, **fields: Any) -> EngineRequest:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
        body = {"model": model or self.model, "messages": messages, "temperature": 0, "max_tokens": 12, **fields}
        return _request("chat", body, stream)

    def completion(self, *, stream: bool = False, **fields: Any) -> EngineRequest:
        body = {"model": self.model, "prompt": PROMPT, "temperature": 0, "max_tokens": 8, **fields}
        return _request("completion", body, stream)

    def embedding(self, inputs: list[str]) -> EngineRequest:
        return _request("embedding", {"model": self.model, "input": inputs}, False)


def _request(kind: Kind, body: dict[str, Any], stream: bool) -> EngineRequest:
    if stream:
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    return EngineRequest(kind=kind, body=body, request_id=uuid.uuid4().hex, stream=stream, include_usage=stream)


async def start_engine(
    provider: str, model: str, *, base_url: str = "", api_key: str | None = None, options: dict[str, Any] | None = None
) -> Engine:
    spec = EngineSpec(
        name=f"contract-{provider}",
        provider=provider,
        model=model,
        base_url=base_url,
        api_key=api_key,
        options=parse_options(provider, options),
    )
    engine = build_engine(spec)
    await engine.start()
    return engine


async def openai_backend(upstream_url: str) -> Backend:
    options = {"organization": "org-contract"}
    engine = await start_engine("openai", "gpt-4o-mini", base_url=upstream_url, api_key=OPENAI_KEY, options=options)
    # The fake has no model list: ``error_400`` is its stand-in for a model the upstream refuses.
    return Backend("openai", engine, "gpt-4o-mini", rejecting=(engine, "error_400"))


async def openai_compatible_backend(upstream_url: str) -> Backend:
    # Like `vllm serve` or Ollama on a private network: no key at all.
    engine = await start_engine("openai_compatible", "served-model", base_url=upstream_url)
    return Backend("openai_compatible", engine, "served-model", rejecting=(engine, "error_400"))


async def azure_backend(upstream_root: str) -> Backend:
    options = {"api_version": AZURE_API_VERSION, "deployment": AZURE_DEPLOYMENT}
    engine = await start_engine("azure", "gpt-4o", base_url=upstream_root, api_key=AZURE_KEY, options=options)
    return Backend("azure", engine, "gpt-4o", rejecting=(engine, "error_400"))


async def anthropic_backend(base_url: str, api_key: str) -> Backend:
    engine = await start_engine("anthropic", "claude-contract", base_url=base_url, api_key=api_key)
    return Backend(
        "anthropic",
        engine,
        "claude-contract",
        supports_completions=False,
        supports_embeddings=False,
        # Anthropic honours max_tokens; its fake answers with the same text regardless.
        honours_max_tokens=False,
        # What Anthropic answers for a model it does not have: 404 not_found_error.
        rejecting=(engine, "claude-status-404"),
    )


async def triton_backend(target: str, *, estimate: bool) -> tuple[Backend, Engine]:
    """The backend and the extra engine (pointed at a model Triton lacks) to close with it."""
    options: dict[str, Any] = {"embedding_model": "embedder"}
    if estimate:
        options["count_tokens_with"] = "estimate"
    url = f"grpc://{target}"
    engine = await start_engine("triton", "llm", base_url=url, options=options)
    # Triton addresses the model by the deployment's name, not the body's.
    missing = await start_engine("triton", "no-such-model", base_url=url, options=options)
    name = "triton_estimated" if estimate else "triton"
    backend = Backend(name, engine, "llm", exact_usage=not estimate, rejecting=(missing, "no-such-model"))
    return backend, missing


async def llamacpp_backend() -> Backend:
    # One thread: the suite shares the machine with other work.
    engine = await start_engine("llamacpp", "smollm2-dev", options={"n_threads": 1})
    return Backend("llamacpp", engine, "smollm2-dev", supports_embeddings=False, in_process=True)


def vllm_backend(engine: Engine, model: str) -> Backend:
    return Backend("vllm", engine, model, supports_embeddings=False, in_process=True)


async def llamacpp_embedding_backend() -> Backend:
    # The same SmolLM2 GGUF loaded as an embedding model (mean pooling).
    engine = await start_engine("llamacpp", "smollm2-embed", options={"n_threads": 1, "embedding": True})
    return Backend("llamacpp_embedding", engine, "smollm2-embed", serves_generation=False, in_process=True)


def vllm_embedding_backend(engine: Engine, model: str) -> Backend:
    return Backend("vllm_embedding", engine, model, serves_generation=False, in_process=True)
