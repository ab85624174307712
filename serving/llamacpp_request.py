"""OpenAI request bodies --> llama.cpp call arguments, and llama.cpp errors --> gateway errors.

Validation happens here, before a request queues for a model copy, so a bad
request never holds one. Error messages never carry prompt text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from core.errors import GatewayError, InvalidRequest, UpstreamError
from serving.base import JsonObject

_T = TypeVar("_T")


def guarded(work: Callable[[], _T]) -> _T:
    """Runs llama.cpp work, turning its exceptions into gateway errors (no prompt text)."""
    try:
        return work()
    except GatewayError:
        raise
    except ValueError as exc:
        if "context window" in str(exc):
            raise InvalidRequest("prompt plus max_tokens exceed the model's context window") from exc
        raise InvalidRequest(f"llama.cpp rejected the request ({type(exc).__name__})") from exc
    except Exception as exc:
        # The model's chat template raises (via jinja2) on conversations it cannot format.
        if type(exc).__module__.startswith("jinja2"):
            raise InvalidRequest("the model's chat template rejected these messages", param="messages") from exc
        raise UpstreamError(f"llama.cpp failed ({type(exc).__name__})") from exc


def _value(body: JsonObject, key: str, default: Any) -> Any:
    value = body.get(key)
    return default if value is None else value


def _sampling(body: JsonObject, seed: int | None) -> dict[str, Any]:
    """OpenAI sampling fields --> llama.cpp keyword arguments, with OpenAI's defaults."""
    if _value(body, "n", 1) != 1:
        raise InvalidRequest("llama.cpp engines generate one choice per request", param="n")
    if body.get("logprobs"):
        raise InvalidRequest("llama.cpp engines do not return logprobs", param="logprobs")
    return {
        "temperature": _value(body, "temperature", 1.0),
        "top_p": _value(body, "top_p", 1.0),
        "presence_penalty": _value(body, "presence_penalty", 0.0),
        "frequency_penalty": _value(body, "frequency_penalty", 0.0),
        "stop": _value(body, "stop", []),
        "seed": _value(body, "seed", seed),
    }


def chat_kwargs(body: JsonObject, seed: int | None) -> dict[str, Any]:
    kwargs = _sampling(body, seed)
    kwargs["messages"] = body["messages"]
    kwargs["max_tokens"] = body.get("max_completion_tokens") or body.get("max_tokens")
    for key in ("tools", "tool_choice"):
        if body.get(key) is not None:
            kwargs[key] = body[key]
    response_format = body.get("response_format") or {}
    # llama.cpp knows json_object with an optional schema; OpenAI's json_schema maps onto it.
    if response_format.get("type") == "json_object":
        kwargs["response_format"] = {"type": "json_object"}
    elif response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        kwargs["response_format"] = {"type": "json_object", "schema": schema or {}}
    return kwargs


def completion_kwargs(body: JsonObject, seed: int | None) -> dict[str, Any]:
    kwargs = _sampling(body, seed)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) and not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
        raise InvalidRequest("prompt must be one string or one list of token ids", param="prompt")
    kwargs["prompt"] = prompt
    kwargs["max_tokens"] = _value(body, "max_tokens", 16)
    return kwargs


def chunk_text(kind: str, chunk: JsonObject) -> tuple[str, str | None]:
    choices = chunk.get("choices") or [{}]
    choice = choices[0]
    text = choice.get("text") if kind == "completion" else (choice.get("delta") or {}).get("content")
    return text or "", choice.get("finish_reason")
