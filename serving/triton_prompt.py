"""OpenAI request bodies --> the plain prompt text and sampling settings Triton takes.

Triton LLM backends (vLLM, TensorRT-LLM) accept one text prompt, not a list of
chat messages, so chat requests are rendered through a template here:

``chatml`` (default)::

    <|im_start|>system
    You are terse.<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant

``plain``: one ``role: content`` line per message, then ``assistant:``.

Pick the template the served model was trained with; a model whose tokenizer
applies its own template server-side should use ``plain``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import msgspec

from core.errors import InvalidRequest
from serving.base import JsonObject, Kind

ChatTemplate: TypeAlias = Literal["chatml", "plain"]
Backend: TypeAlias = Literal["vllm", "tensorrt_llm"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


@dataclass(slots=True)
class SamplingSettings:
    """The sampling knobs both backends understand, taken from the OpenAI body."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: list[str] = field(default_factory=list)

    def vllm_json(self) -> bytes:
        """The vLLM backend's ``sampling_parameters`` input: a JSON object string."""
        params: dict[str, Any] = {"max_tokens": self.max_tokens}
        for name in ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        if self.stop:
            params["stop"] = self.stop
        return msgspec.json.encode(params)


@dataclass(slots=True)
class LLMRequest:
    """One generation as Triton will receive it."""

    model: str
    version: str
    request_id: str
    backend: Backend
    prompt: str
    settings: SamplingSettings
    stream: bool
    # Ask the server for token counts and the finish reason.
    counts: bool


def render_prompt(kind: Kind, body: JsonObject, template: ChatTemplate) -> str:
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array", param="messages")
        return _render_chat(messages, template)
    return _completion_prompt(body.get("prompt"))


def _render_chat(messages: list[Any], template: ChatTemplate) -> str:
    parts: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest("each message must be an object", param=f"messages.{index}")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest("unsupported message role", param=f"messages.{index}.role")
        content = _message_text(message.get("content"), index)
        # "developer" is OpenAI's newer name for the system role; models trained
        # on ChatML only know "system".
        if role == "developer":
            role = "system"
        if template == "chatml":
            parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        else:
            parts.append(f"{role}: {content}\n")
    parts.append("<|im_start|>assistant\n" if template == "chatml" else "assistant:")
    return "".join(parts)


def _message_text(content: Any, index: int) -> str:
    # Content is either a string or a list of parts; only text parts can travel
    # as a plain-text prompt.
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest("only text content parts are supported", param=f"messages.{index}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest("message content must be a string or an array", param=f"messages.{index}.content")


def _completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    raise InvalidRequest("'prompt' must be one string for this deployment", param="prompt")


def sampling_settings(body: JsonObject, default_max_tokens: int) -> SamplingSettings:
    if _int(body, "n", 1) != 1:
        raise InvalidRequest("only n=1 is supported by this deployment", param="n")
    if body.get("tools"):
        raise InvalidRequest("tools are not supported by this deployment", param="tools")
    max_tokens = _int(body, "max_completion_tokens", None)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", default_max_tokens)
    if max_tokens is None or max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
    return SamplingSettings(
        max_tokens=max_tokens,
        temperature=_float(body, "temperature"),
        top_p=_float(body, "top_p"),
        top_k=_int(body, "top_k", None),
        seed=_int(body, "seed", None),
        presence_penalty=_float(body, "presence_penalty"),
        frequency_penalty=_float(body, "frequency_penalty"),
        stop=_stop(body.get("stop")),
    )


def _int(body: JsonObject, name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer", param=name)
    return value


def _float(body: JsonObject, name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"'{name}' must be a number", param=name)
    return float(value)


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise InvalidRequest("'stop' must be a string or an array of strings", param="stop")
