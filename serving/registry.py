"""Provider name --> engine class and its options Struct.

Heavy backends (vLLM, llama.cpp, Triton) are imported only when a deployment
uses them, so the router starts without their packages installed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import msgspec

from serving.base import Engine, EngineSpec

# provider --> (module, engine class, options Struct)
_PROVIDERS: dict[str, tuple[str, str, str]] = {
    "openai": ("serving.openai_http", "OpenAIEngine", "OpenAIOptions"),
    "openai_compatible": ("serving.openai_http", "OpenAIEngine", "OpenAIOptions"),
    "azure": ("serving.azure", "AzureOpenAIEngine", "AzureOptions"),
    "anthropic": ("serving.anthropic", "AnthropicEngine", "AnthropicOptions"),
    "gemini": ("serving.gemini", "GeminiEngine", "GeminiOptions"),
    "vllm": ("serving.vllm_engine", "VLLMEngine", "VLLMOptions"),
    "triton": ("serving.triton", "TritonEngine", "TritonOptions"),
    "llamacpp": ("serving.llamacpp", "LlamaCppEngine", "LlamaCppOptions"),
}


class ProviderError(Exception):
    pass


class PluginEngineOptions(msgspec.Struct, forbid_unknown_fields=True):
    """``provider: plugin``: the engine a plugin offers (by name), and the settings handed to its factory."""

    engine: str
    settings: dict[str, Any] = msgspec.field(default_factory=dict)


def providers() -> list[str]:
    return sorted([*_PROVIDERS, "plugin"])


def _load(provider: str) -> tuple[Callable[[EngineSpec], Engine], type[msgspec.Struct]]:
    try:
        module_name, engine_name, options_name = _PROVIDERS[provider]
    except KeyError:
        raise ProviderError(f"unknown provider {provider!r}; known: {', '.join(providers())}") from None
    module = importlib.import_module(module_name)
    engine_cls: Callable[[EngineSpec], Engine] = getattr(module, engine_name)
    options_cls: type[msgspec.Struct] = getattr(module, options_name)
    return engine_cls, options_cls


def parse_options(provider: str, raw: dict[str, Any] | None) -> msgspec.Struct:
    """Validate provider options; errors name the offending option."""
    options_cls = PluginEngineOptions if provider == "plugin" else _load(provider)[1]
    try:
        return msgspec.convert(raw or {}, options_cls)
    except msgspec.ValidationError as exc:
        raise ProviderError(str(exc).replace("$.", "options.").replace("`$`", "`options`")) from None


def build_engine(spec: EngineSpec) -> Engine:
    """A built-in provider's engine (``provider: plugin`` engines are made by their plugin)."""
    engine_cls, _ = _load(spec.provider)
    return engine_cls(spec)
