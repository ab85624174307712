"""OpenAI chat requests --> Anthropic Messages requests, and Anthropic replies back.

Pure functions over decoded JSON; ``serving.anthropic`` does the I/O. Anything
OpenAI can express that Anthropic cannot is refused with ``InvalidRequest``
naming the parameter, rather than dropped, so a client never gets a silently
different answer. Streams are translated in ``serving.anthropic_stream``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from core.errors import InvalidRequest, UpstreamError
from serving.base import JsonObject, Usage, make_usage, usage_json

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_encode = msgspec.json.Encoder().encode

# OpenAI parameters Anthropic has no equivalent for --> "is it actually used?"
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v not in (None, 1),
    "logprobs": bool,
    "top_logprobs": bool,
    "logit_bias": bool,
    "frequency_penalty": bool,
    "presence_penalty": bool,
    "modalities": lambda v: v is not None and list(v) != ["text"],
    "audio": lambda v: v is not None,
    "prediction": lambda v: v is not None,
    "web_search_options": lambda v: v is not None,
    "reasoning_effort": lambda v: v is not None,
    "functions": lambda v: v is not None,
    "function_call": lambda v: v is not None,
}


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


# --- request: OpenAI --> Anthropic -------------------------------------------


def to_anthropic_request(body: JsonObject, *, default_max_tokens: int) -> JsonObject:
    """Translate an OpenAI chat body; ``body["model"]`` is already the upstream's name."""
    for name, used in _UNSUPPORTED.items():
        if name in body and used(body[name]):
            raise _invalid(f"parameter '{name}' is not supported by Anthropic deployments", name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("'model' is required", "model")
    system, messages = _convert_messages(body.get("messages"))
    out: JsonObject = {
        "model": model,
        "messages": messages,
        "max_tokens": _max_tokens(body, default_max_tokens),
    }
    if system:
        out["system"] = system
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 1:
            raise _invalid("Anthropic deployments accept 'temperature' between 0 and 1", "temperature")
        out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("stream"):
        out["stream"] = True
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        out["tools"] = [_convert_tool(tool, i) for i, tool in enumerate(body["tools"])]
    choice = _convert_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"), bool(out.get("tools")))
    if choice is not None:
        out["tool_choice"] = choice
    output_format = _convert_response_format(body.get("response_format"))
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    return out


def _convert_response_format(response_format: object) -> JsonObject | None:
    """OpenAI ``response_format`` --> Anthropic's structured output (``output_config.format``); text needs none."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        # Any JSON object: Anthropic takes only a schema, and this is the schema of "an object".
        return {"type": "json_schema", "schema": {"type": "object"}}
    if kind == "json_schema":
        spec = response_format.get("json_schema") if isinstance(response_format, dict) else None
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _invalid("'response_format.json_schema.schema' must be a JSON schema object", "response_format")
        return {"type": "json_schema", "schema": schema}
    raise _invalid("'response_format.type' must be text, json_object or json_schema", "response_format")


def _max_tokens(body: JsonObject, default: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _invalid(f"'{name}' must be a positive integer", name)
            return value
    return default


def _convert_messages(messages: object) -> tuple[str, list[JsonObject]]:
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty array", "messages")
    system: list[str] = []
    out: list[JsonObject] = []
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _invalid("each message must be an object", param)
        role = msg.get("role")
        if role in ("system", "developer"):
            text = _text_only(msg.get("content"), param)
            if text:
                system.append(text)
            continue
        if role == "user":
            _append(out, "user", _content_blocks(msg.get("content"), param))
        elif role == "assistant":
            _append(out, "assistant", _assistant_blocks(msg, param))
        elif role == "tool":
            _append(out, "user", [_tool_result(msg, param)])
        else:
            raise _invalid("message role must be system, developer, user, assistant or tool", f"{param}.role")
    # Anthropic has one system prompt, so every system/developer message joins it.
    return "\n\n".join(system), out


def _append(out: list[JsonObject], role: str, blocks: list[JsonObject]) -> None:
    """Anthropic wants alternating roles and no empty messages: merge or skip."""
    if not blocks:
        return
    if out and out[-1]["role"] == role:
        merged = out[-1]["content"] + blocks
        # tool_result blocks must open a user message; the sort is stable.
        merged.sort(key=lambda block: block["type"] != "tool_result")
        out[-1]["content"] = merged
    else:
        out.append({"role": role, "content": blocks})


def _text_only(content: object, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    blocks = _content_blocks(content, param)
    if any(block["type"] != "text" for block in blocks):
        raise _invalid("only text content is allowed here", f"{param}.content")
    return "\n".join(block["text"] for block in blocks)


def _content_blocks(content: object, param: str) -> list[JsonObject]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid("content must be a string or an array of parts", f"{param}.content")
    blocks: list[JsonObject] = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise _invalid(f"a {kind} part needs a string '{kind}'", where)
            if text:
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), where))
        else:
            raise _invalid("this content part type is not supported by Anthropic deployments", f"{where}.type")
    return blocks


def _image_block(image: object, param: str) -> JsonObject:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _invalid("an image_url part needs a 'url'", f"{param}.image_url")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0]
        if not header.endswith(";base64") or not data:
            raise _invalid("data: image URLs must be base64-encoded", f"{param}.image_url")
        if media_type not in _IMAGE_TYPES:
            raise _invalid("images must be jpeg, png, gif or webp", f"{param}.image_url")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid("image URLs must be http(s) or data: URLs", f"{param}.image_url")


def _assistant_blocks(msg: JsonObject, param: str) -> list[JsonObject]:
    blocks = _content_blocks(msg.get("content"), param)
    for k, call in enumerate(msg.get("tool_calls") or ()):
        where = f"{param}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not call.get("id") or not function.get("name"):
            raise _invalid("a tool call needs an id and function.name", where)
        arguments = function.get("arguments") or "{}"
        try:
            tool_input = msgspec.json.decode(arguments)
        except (msgspec.DecodeError, TypeError):
            tool_input = None
        if not isinstance(tool_input, dict):
            raise _invalid(
                "function.arguments must be a JSON object encoded as a string", f"{where}.function.arguments"
            )
        blocks.append({"type": "tool_use", "id": call["id"], "name": function["name"], "input": tool_input})
    return blocks


def _tool_result(msg: JsonObject, param: str) -> JsonObject:
    tool_call_id = msg.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise _invalid("a tool message needs a 'tool_call_id'", f"{param}.tool_call_id")
    block: JsonObject = {"type": "tool_result", "tool_use_id": tool_call_id}
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    elif content is not None:
        parts = _content_blocks(content, param)
        if parts:
            block["content"] = parts
    return block


def _convert_tool(tool: object, i: int) -> JsonObject:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise _invalid("only function tools with a name are supported by Anthropic deployments", f"tools[{i}]")
    out: JsonObject = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _convert_tool_choice(choice: object, parallel: object, has_tools: bool) -> JsonObject | None:
    if choice is None:
        out: JsonObject | None = {"type": "auto"} if has_tools and parallel is False else None
    elif choice in ("auto", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise _invalid("tool_choice must be auto, none, required or a named function", "tool_choice")
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# --- response: Anthropic --> OpenAI ------------------------------------------


def to_usage(raw: object) -> Usage:
    """Anthropic counts cache reads and writes apart from input_tokens; OpenAI includes them."""
    fields = raw if isinstance(raw, dict) else {}
    cached = int(fields.get("cache_read_input_tokens") or 0)
    prompt = int(fields.get("input_tokens") or 0) + cached + int(fields.get("cache_creation_input_tokens") or 0)
    completion = int(fields.get("output_tokens") or 0)
    return make_usage(prompt, completion, cached)


def to_openai_response(message: JsonObject, *, created: int | None = None) -> tuple[JsonObject, Usage]:
    """A whole Anthropic Message --> an OpenAI chat.completion and its usage; UpstreamError if malformed."""
    try:
        return _openai_response(message, created)
    except (AttributeError, TypeError, KeyError, ValueError, msgspec.EncodeError):
        raise UpstreamError("Anthropic returned a message of an unexpected shape") from None


def _openai_response(message: JsonObject, created: int | None) -> tuple[JsonObject, Usage]:
    texts: list[str] = []
    tool_calls: list[JsonObject] = []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            tool_calls.append(_tool_call(block))
        # thinking and server-side tool blocks have no OpenAI chat equivalent.
    reply: JsonObject = {"role": "assistant", "content": "".join(texts) if texts else None}
    if tool_calls:
        reply["tool_calls"] = tool_calls
    usage = to_usage(message.get("usage"))
    body: JsonObject = {
        "id": message.get("id") or "",
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": message.get("model") or "",
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": STOP_REASONS.get(message.get("stop_reason") or "", "stop"),
                "logprobs": None,
            }
        ],
        "usage": usage_json(usage),
    }
    return body, usage


def _tool_call(block: JsonObject) -> JsonObject:
    arguments = _encode(block.get("input") or {}).decode()
    return {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}
