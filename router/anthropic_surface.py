"""Anthropic Messages request --> the pipeline's chat body; and the gateway's errors in Anthropic's shape.

The reverse of ``serving.anthropic_translate`` (which sends OpenAI chat to an
Anthropic upstream). Tool use and results become chat tool calls and tool
messages, with ids kept, so that a client's next turn names the calls it got.
"""

from __future__ import annotations

from typing import Any

import msgspec

from core.errors import GatewayError, InvalidRequest
from router.anthropic_wire import (
    Base64ImageSource,
    BlockParam,
    CountTokensRequest,
    ImageBlockParam,
    MessageParam,
    MessagesRequest,
    TextBlockParam,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceParam,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlockParam,
)

JsonObject = dict[str, Any]
_encode = msgspec.json.encode
# Said to the model ahead of a tool result marked ``is_error``: chat tool messages have no such flag.
TOOL_ERROR_PREFIX = "Error: "


# --- messages -------------------------------------------------------------------


def chat_messages(request: CountTokensRequest) -> list[JsonObject]:
    """The conversation as chat messages: the system prompt first, each tool result as a tool message."""
    out: list[JsonObject] = []
    system = request.system
    if isinstance(system, str):
        if system:
            out.append({"role": "system", "content": system})
    elif system:
        out.append({"role": "system", "content": _text_content(system)})
    for i, message in enumerate(request.messages):
        if message.role == "user":
            out += _user_messages(message, i)
        else:
            out.append(_assistant_message(message, i))
    return out


def _text_content(blocks: list[TextBlockParam]) -> str | list[JsonObject]:
    if len(blocks) == 1:
        return blocks[0].text
    return [{"type": "text", "text": b.text} for b in blocks]


def _user_messages(message: MessageParam, index: int) -> list[JsonObject]:
    """Tool results first (chat wants them right after the assistant's calls), then what the user said."""
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    results: list[JsonObject] = []
    parts: list[JsonObject] = []
    for j, block in enumerate(message.content):
        if isinstance(block, ToolResultBlockParam):
            results.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": _result_content(block)})
        elif isinstance(block, TextBlockParam):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlockParam):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        elif isinstance(block, ToolUseBlockParam):
            raise _misplaced("tool_use", "user", index, j)
        # thinking blocks: dropped (``router.anthropic_wire``)
    if not parts:
        return results
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts}]


def _result_content(block: ToolResultBlockParam) -> str | list[JsonObject]:
    content = block.content
    if content is None or isinstance(content, str):
        text = content or ""
        return TOOL_ERROR_PREFIX + text if block.is_error else text
    parts = [{"type": "text", "text": b.text} for b in content]
    if block.is_error:
        parts.insert(0, {"type": "text", "text": TOOL_ERROR_PREFIX})
    if len(parts) == 1:
        return str(parts[0]["text"])
    return parts


def _image_url(block: ImageBlockParam) -> str:
    source = block.source
    if isinstance(source, Base64ImageSource):
        return f"data:{source.media_type};base64,{source.data}"
    return source.url


def _assistant_message(message: MessageParam, index: int) -> JsonObject:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    texts: list[str] = []
    calls: list[JsonObject] = []
    for j, block in enumerate(message.content):
        if isinstance(block, TextBlockParam):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlockParam):
            function = {"name": block.name, "arguments": _encode(block.input).decode()}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif isinstance(block, (ImageBlockParam, ToolResultBlockParam)):
            raise _misplaced(_kind(block), "assistant", index, j)
    out: JsonObject = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _kind(block: BlockParam) -> str:
    return str(type(block).__struct_config__.tag)


def _misplaced(kind: str, role: str, index: int, j: int) -> InvalidRequest:
    return InvalidRequest(
        f"A `{kind}` block cannot be part of a `{role}` message.", param=f"messages[{index}].content[{j}].type", code="invalid_value"
    )


# --- the chat body ----------------------------------------------------------------


def chat_tools(request: CountTokensRequest) -> JsonObject:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` of the chat body (nothing without tools)."""
    if not request.tools:
        return {}
    tools = []
    for tool in request.tools:
        function: JsonObject = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    out: JsonObject = {"tools": tools}
    choice = request.tool_choice
    if choice is not None:
        out["tool_choice"] = _tool_choice(choice)
        if not isinstance(choice, ToolChoiceNone) and choice.disable_parallel_tool_use:
            out["parallel_tool_calls"] = False
    return out


def _tool_choice(choice: ToolChoiceParam) -> str | JsonObject:
    if isinstance(choice, ToolChoiceTool):
        return {"type": "function", "function": {"name": choice.name}}
    if isinstance(choice, ToolChoiceAny):
        return "required"
    return "none" if isinstance(choice, ToolChoiceNone) else "auto"


def chat_body(request: MessagesRequest) -> JsonObject:
    """The pipeline's chat body for a Messages request."""
    body: JsonObject = {"model": request.model, "messages": chat_messages(request), "max_tokens": request.max_tokens}
    body.update(chat_tools(request))
    if request.stream:
        body["stream"] = True
    if request.stop_sequences:
        body["stop"] = request.stop_sequences
    # top_k is no OpenAI parameter; engines that sample with it (vLLM, llama.cpp) read it as an extra field.
    optional = {"temperature": request.temperature, "top_p": request.top_p, "top_k": request.top_k}
    body.update((k, v) for k, v in optional.items() if v is not None)
    if request.metadata is not None and request.metadata.user_id:
        body["user"] = request.metadata.user_id
    if request.output_config is not None and request.output_config.format is not None:
        # Every engine takes the chat form; an Anthropic deployment turns it back into output_config.
        schema = request.output_config.format.schema
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": True}}
    return body


def count_body(request: CountTokensRequest) -> JsonObject:
    """The chat body whose prompt ``count_tokens`` counts, as the pipeline would."""
    return {"model": request.model, "messages": chat_messages(request), **chat_tools(request)}


# --- errors ---------------------------------------------------------------------------

# HTTP status --> Anthropic's error type (the set the anthropic SDK models); anything else is the client's
# (4xx: a 413 included) or the server's (5xx) fault.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Anthropic's clients know an overloaded service by 529, not by 503.
_STATUS = {503: 529}


def error_status(exc: GatewayError) -> int:
    return _STATUS.get(exc.status, exc.status)


def error_type(status: int) -> str:
    return _TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_json(exc: GatewayError) -> bytes:
    """``{"type": "error", "error": {"type", "message"}}``: the body of an error answer and of a stream's error event."""
    return _encode({"type": "error", "error": {"type": error_type(error_status(exc)), "message": exc.message}})
