"""OpenAI request body --> vLLM inputs: chat messages, completion prompts, sampling.

Pure functions over plain JSON so the mapping is checked before anything reaches
the engine: every bad value becomes ``InvalidRequest`` naming the parameter, and
nothing here imports vLLM. Messages never quote the prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidRequest
from serving.base import JsonObject
from serving.structured_outputs import template_tool_calls

# OpenAI caps choices per request at 128; more only multiplies engine work.
MAX_CHOICES = 128
_INT64 = 2**63
# The code OpenAI uses when prompt plus completion would not fit the context.
_CONTEXT_CODE = "context_length_exceeded"


@dataclass(slots=True, frozen=True)
class EngineLimits:
    """What the running model allows, read once at engine start."""

    max_model_len: int
    max_logprobs: int


# --- chat ----------------------------------------------------------------------


def chat_messages(body: JsonObject) -> list[JsonObject]:
    """Messages as the chat template expects them: text content only, as strings."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    return [_message(message, index) for index, message in enumerate(messages)]


def _message(message: object, index: int) -> JsonObject:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise InvalidRequest(f"{param} must be an object with a string 'role'", param=param)
    normalized = dict(message)
    content = message.get("content")
    if isinstance(content, list):
        normalized["content"] = _text_parts(content, param)
    elif content is not None and not isinstance(content, str):
        raise InvalidRequest(f"{param}.content must be a string or an array of parts", param=param)
    calls = template_tool_calls(message, param)
    if calls is not None:
        normalized["tool_calls"] = calls
    if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise InvalidRequest(f"{param} is a tool result and needs a string 'tool_call_id'", param=param)
    return normalized


def _text_parts(parts: list[object], param: str) -> str:
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{param}.content: only text parts are supported by this model", param=param)
        texts.append(part["text"])
    return "\n".join(texts)


# --- completions ------------------------------------------------------------------


def completion_prompts(body: JsonObject) -> list[str | list[int]]:
    """One entry per prompt: text to tokenize, or token ids as given."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, str) for item in prompt):
            return list(prompt)
        if all(_is_token(item) for item in prompt):
            return [list(prompt)]
        if all(isinstance(item, list) and item and all(_is_token(t) for t in item) for item in prompt):
            return [list(item) for item in prompt]
    raise InvalidRequest(
        "'prompt' must be a string, an array of strings, an array of token ids or an array of token id arrays",
        param="prompt",
    )


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- sampling -------------------------------------------------------------------------


def sampling_kwargs(kind: str, body: JsonObject, *, prompt_len: int, limits: EngineLimits) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` (``output_kind`` excepted)."""
    _reject_unsupported(kind, body)
    kwargs: dict[str, Any] = {"max_tokens": _max_tokens(kind, body, prompt_len, limits)}
    for key, low, high in (
        ("temperature", 0.0, 2.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        value = _number(body, key, low, high)
        if value is not None:
            kwargs[key] = value
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None:
        if top_p == 0.0:
            raise InvalidRequest("'top_p' must be greater than 0", param="top_p")
        kwargs["top_p"] = top_p
    n = _integer(body, "n", 1, MAX_CHOICES)
    if n is not None:
        kwargs["n"] = n
    seed = _integer(body, "seed", -_INT64, _INT64 - 1)
    if seed is not None:
        kwargs["seed"] = seed
    stop = _stop(body)
    if stop:
        kwargs["stop"] = stop
    logprobs = chat_logprobs(body, limits) if kind == "chat" else _integer(body, "logprobs", 0, limits.max_logprobs)
    if logprobs is not None:
        kwargs["logprobs"] = logprobs
    kwargs.update(_extensions(body, kwargs["max_tokens"]))
    return kwargs


def chat_logprobs(body: JsonObject, limits: EngineLimits) -> int | None:
    """Top alternatives per token when ``logprobs`` is on, else None."""
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise InvalidRequest("'logprobs' must be a boolean", param="logprobs")
    top = _integer(body, "top_logprobs", 0, limits.max_logprobs)
    if top is not None and not wanted:
        raise InvalidRequest("'top_logprobs' requires 'logprobs' to be true", param="top_logprobs")
    return (top or 0) if wanted else None


def _max_tokens(kind: str, body: JsonObject, prompt_len: int, limits: EngineLimits) -> int:
    remaining = limits.max_model_len - prompt_len
    if remaining < 1:
        raise InvalidRequest(
            f"the prompt has {prompt_len} tokens; this model's context is {limits.max_model_len} tokens",
            param="messages" if kind == "chat" else "prompt",
            code=_CONTEXT_CODE,
        )
    key = "max_completion_tokens" if kind == "chat" and body.get("max_completion_tokens") is not None else "max_tokens"
    requested = _integer(body, key, 1, None)
    if requested is None:
        return remaining
    if requested > remaining:
        raise InvalidRequest(
            f"'{key}' is {requested} but the prompt has {prompt_len} tokens of a {limits.max_model_len}-token context",
            param=key,
            code=_CONTEXT_CODE,
        )
    return requested


def _stop(body: JsonObject) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
        raise InvalidRequest("'stop' must be a non-empty string or an array of non-empty strings", param="stop")
    return list(items)


def _extensions(body: JsonObject, max_tokens: int) -> dict[str, Any]:
    """Non-OpenAI knobs that vLLM's own server accepts too."""
    kwargs: dict[str, Any] = {}
    top_k = _integer(body, "top_k", -1, None)
    if top_k is not None:
        kwargs["top_k"] = top_k
    min_tokens = _integer(body, "min_tokens", 0, max_tokens)
    if min_tokens is not None:
        kwargs["min_tokens"] = min_tokens
    ignore_eos = body.get("ignore_eos")
    if ignore_eos is not None:
        if not isinstance(ignore_eos, bool):
            raise InvalidRequest("'ignore_eos' must be a boolean", param="ignore_eos")
        kwargs["ignore_eos"] = ignore_eos
    bias = body.get("logit_bias")
    if bias is not None:
        kwargs["logit_bias"] = _logit_bias(bias)
    return kwargs


def _logit_bias(bias: object) -> dict[int, float]:
    if not isinstance(bias, dict):
        raise InvalidRequest("'logit_bias' must be an object of token id --> bias", param="logit_bias")
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdigit()) or not _is_number(value) or not -100 <= value <= 100:
            raise InvalidRequest("'logit_bias' maps token ids to numbers in [-100, 100]", param="logit_bias")
        parsed[int(key)] = float(value)
    return parsed


def _reject_unsupported(kind: str, body: JsonObject) -> None:
    if kind == "completion":
        if body.get("echo"):
            raise InvalidRequest("'echo' is not supported by this engine", param="echo")
        if body.get("suffix") is not None:
            raise InvalidRequest("'suffix' is not supported by this engine", param="suffix")
        best_of = body.get("best_of")
        if best_of is not None and best_of != (body.get("n") or 1):
            raise InvalidRequest("'best_of' is not supported by this engine", param="best_of")


# --- value checks ------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(body: JsonObject, key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_number(value) or not low <= value <= high:
        raise InvalidRequest(f"'{key}' must be a number between {low:g} and {high:g}", param=key)
    return float(value)


def _integer(body: JsonObject, key: str, low: int, high: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidRequest(f"'{key}' must be an integer {bound}", param=key)
    return value
