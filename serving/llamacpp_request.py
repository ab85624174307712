"""OpenAI request bodies --> llama.cpp call arguments, and llama.cpp errors --> gateway errors.

Validation happens here, before a request queues for a model copy, so a bad
request never holds one. Error messages never carry prompt text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from core.errors import GatewayError, InvalidRequest, UpstreamError
from serving.base import JsonObject
from serving.llamacpp_grammar import json_grammar
from serving.llamacpp_options import LlamaCppOptions
from serving.structured_outputs import JsonConstraint, ToolPlan, forced_call_schema, response_constraint, template_tool_calls, tool_plan
from serving.tool_call_hermes import HermesCalls, hermes_text
from serving.tool_call_text import ForcedCalls, ToolOutput

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


def chat_kwargs(body: JsonObject, options: LlamaCppOptions, renders_tool_calls: bool) -> tuple[dict[str, Any], ToolOutput | None]:
    """The chat call's arguments, and how to read tool calls from its text (None: it is all content).

    ``tool_choice`` never reaches llama-cpp-python: its own handling of a named
    function ignores ``required``, streams the name in every chunk and falls back
    to any JSON when a schema does not convert. Calls are decoded under a
    grammar here and read back by ``serving.llamacpp_tools``.
    """
    kwargs = _sampling(body, options.seed)
    plan = tool_plan(body)
    kwargs["messages"] = chat_messages(body.get("messages"), renders_tool_calls)
    kwargs["max_tokens"] = body.get("max_completion_tokens") or body.get("max_tokens")
    if plan is not None and plan.mode != "none":
        # The chat template decides how the model sees them.
        kwargs["tools"] = plan.tools
    constraint, tools = _tool_reading(body, plan, options)
    if constraint is not None:
        kwargs["grammar"] = json_grammar(constraint)
    return kwargs, tools


def _tool_reading(body: JsonObject, plan: ToolPlan | None, options: LlamaCppOptions) -> tuple[JsonConstraint | None, ToolOutput | None]:
    answer = response_constraint(body)
    if plan is not None and plan.mode == "forced":
        # The call replaces this turn's text answer; response_format shapes a later one.
        return JsonConstraint(schema=forced_call_schema(plan), param="tool_choice"), ForcedCalls()
    reader = HermesCalls() if plan is not None and plan.mode == "auto" and options.tool_parser == "hermes" else None
    return answer, reader


def chat_messages(messages: object, renders_tool_calls: bool) -> list[JsonObject]:
    """Messages for the chat template; turns with tool calls made renderable, the rest as sent."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    rendered: list[JsonObject] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"{param} must be an object with a string 'role'", param=param)
        if message["role"] == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise InvalidRequest(f"{param} is a tool result and needs a string 'tool_call_id'", param=param)
        calls = template_tool_calls(message, param)
        if calls is None:
            rendered.append(message)
            continue
        text = _text(message.get("content"), param)
        if renders_tool_calls:
            rendered.append({**message, "content": text, "tool_calls": calls})
        else:
            # A template that knows no tool calls still shows the model what it called.
            rest = {key: value for key, value in message.items() if key != "tool_calls"}
            rendered.append({**rest, "content": text + hermes_text(calls)})
    return rendered


def _text(content: object, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(part, dict) and isinstance(part.get("text"), str) for part in content):
        return "".join(part["text"] for part in content)
    raise InvalidRequest(f"{param}.content must be a string or an array of text parts", param=param)


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
