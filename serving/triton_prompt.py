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
applies its own template server-side should use ``plain``. Tool definitions,
an assistant's earlier calls and tool results are written into the turns in
the Hermes format (``serving.triton_tools``); consecutive tool results become
one user turn, as Qwen's template has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import msgspec

from core.errors import InvalidRequest
from serving.base import JsonObject, Kind
from serving.structured_outputs import template_tool_calls
from serving.triton_guides import Guide
from serving.triton_tools import calls_text, response_text, tools_text

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

    def vllm_json(self, extra: Mapping[str, str] | None = None) -> bytes:
        """The vLLM backend's ``sampling_parameters`` input: a JSON object string, with ``extra`` entries."""
        params: dict[str, Any] = {"max_tokens": self.max_tokens}
        for name in ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        if self.stop:
            params["stop"] = self.stop
        params.update(extra or {})
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
    # The constraint to decode under, if any.
    guide: Guide | None = None
    # gRPC metadata sent with the call: the W3C trace context, when the request carries one.
    metadata: dict[str, str] | None = None


def render_prompt(kind: Kind, body: JsonObject, template: ChatTemplate, tools: list[JsonObject] | None = None) -> str:
    """The prompt text; ``tools`` (chat only) are the function tools to show the model."""
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array", param="messages")
        turns = _turns(messages, tools)
        if template == "chatml":
            return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"
        return "".join(f"{role}: {text}\n" for role, text in turns) + "assistant:"
    return _completion_prompt(body.get("prompt"))


def _turns(messages: list[Any], tools: list[JsonObject] | None) -> list[tuple[str, str]]:
    """Messages --> (role, text) turns, with tools, calls and results written in."""
    turns: list[tuple[str, str]] = []
    results: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest("each message must be an object", param=f"messages.{index}")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequest("unsupported message role", param=f"messages.{index}.role")
        content = _message_text(message.get("content"), index)
        if role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise InvalidRequest("a tool result needs a string 'tool_call_id'", param=f"messages.{index}.tool_call_id")
            results.append(response_text(content))
            continue
        if results:
            turns.append(("user", "\n".join(results)))
            results = []
        calls = template_tool_calls(message, f"messages.{index}") if role == "assistant" else None
        if calls:
            content = "\n".join(filter(None, [content, calls_text(calls)]))
        # "developer" is OpenAI's newer name for the system role; models trained
        # on ChatML only know "system".
        turns.append(("system" if role == "developer" else role, content))
    if results:
        turns.append(("user", "\n".join(results)))
    if tools:
        if turns and turns[0][0] == "system":
            turns[0] = ("system", f"{turns[0][1]}\n\n{tools_text(tools)}")
        else:
            turns.insert(0, ("system", tools_text(tools)))
    return turns


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
