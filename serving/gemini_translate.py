"""OpenAI chat requests --> Gemini ``generateContent`` requests.

Pure functions over decoded JSON; ``serving.gemini`` does the I/O, replies are
translated back in ``serving.gemini_reply`` and streams in ``serving.gemini_stream``.
Anything OpenAI can express that Gemini cannot is refused with ``InvalidRequest``
naming the parameter, rather than dropped, so a client never gets a silently
different answer. Field names are Gemini's camelCase JSON names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from core.errors import InvalidRequest
from serving.base import JsonObject

# Google's documented stand-in for a thought signature a client did not keep:
# Gemini 3 refuses replayed function calls that carry none.
SKIP_SIGNATURE = "skip_thought_signature_validator"
_GEMINI_MAJOR = re.compile(r"gemini-(\d+)")
# OpenAI input_audio formats --> Gemini MIME types.
_AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}

# OpenAI parameters Gemini has no equivalent for --> "is it actually used?"
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "logprobs": bool,
    "top_logprobs": lambda v: v is not None,
    "logit_bias": bool,
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


def to_gemini_request(body: JsonObject) -> JsonObject:
    """Translate an OpenAI chat body; the model goes in the URL, not the body."""
    for name, used in _UNSUPPORTED.items():
        if name in body and used(body[name]):
            raise _invalid(f"parameter '{name}' is not supported by Gemini deployments", name)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("'model' is required", "model")
    system, contents = _convert_messages(body.get("messages"), needs_signature=_needs_signature(model))
    out: JsonObject = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": text} for text in system]}
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    if body.get("tools"):
        out["tools"] = [{"functionDeclarations": [_declaration(tool, i) for i, tool in enumerate(body["tools"])]}]
    choice = _tool_config(body.get("tool_choice"))
    if choice is not None:
        out["toolConfig"] = {"functionCallingConfig": choice}
    return out


def _needs_signature(model: str) -> bool:
    match = _GEMINI_MAJOR.search(model)
    return match is not None and int(match.group(1)) >= 3


# --- messages ----------------------------------------------------------------


def _convert_messages(messages: object, *, needs_signature: bool) -> tuple[list[str], list[JsonObject]]:
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty array", "messages")
    system: list[str] = []
    contents: list[JsonObject] = []
    # tool_call id --> function name: Gemini's functionResponse names the function, not the call.
    call_names: dict[str, str] = {}
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _invalid("each message must be an object", param)
        role = msg.get("role")
        if role in ("system", "developer"):
            text = _text_only(msg.get("content"), param)
            if text:
                system.append(text)
        elif role == "user":
            _append(contents, "user", _parts(msg.get("content"), param))
        elif role == "assistant":
            _append(contents, "model", _model_parts(msg, param, call_names, needs_signature))
        elif role == "tool":
            _append(contents, "user", [_function_response(msg, param, call_names)])
        else:
            raise _invalid("message role must be system, developer, user, assistant or tool", f"{param}.role")
    if not contents:
        raise _invalid("Gemini deployments need at least one user or assistant message", "messages")
    return system, contents


def _append(contents: list[JsonObject], role: str, parts: list[JsonObject]) -> None:
    """One content per turn: consecutive messages of a role (parallel tool results) share it."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _text_only(content: object, param: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = _parts(content, param)
    if any("text" not in part for part in parts):
        raise _invalid("only text content is allowed here", f"{param}.content")
    return "\n".join(part["text"] for part in parts)


def _parts(content: object, param: str) -> list[JsonObject]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _invalid("content must be a string or an array of parts", f"{param}.content")
    parts: list[JsonObject] = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise _invalid(f"a {kind} part needs a string '{kind}'", where)
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(_inline_data(url, f"{where}.image_url", "image/"))
        elif kind == "input_audio":
            parts.append(_audio(part.get("input_audio"), f"{where}.input_audio"))
        elif kind == "file":
            file = part.get("file")
            parts.append(_inline_data(file.get("file_data") if isinstance(file, dict) else None, f"{where}.file", ""))
        else:
            raise _invalid("this content part type is not supported by Gemini deployments", f"{where}.type")
    return parts


def _inline_data(url: object, param: str, prefix: str) -> JsonObject:
    """A base64 data: URL --> an inlineData part; Gemini cannot fetch arbitrary URLs itself."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise _invalid("Gemini deployments take images and files as base64 data: URLs", param)
    header, _, data = url.partition(",")
    mime_type = header[5:].split(";", 1)[0]
    if not header.endswith(";base64") or not data or not mime_type.startswith(prefix) or "/" not in mime_type:
        raise _invalid(f"expected a base64 data: URL of type {prefix or 'type/subtype'}*", param)
    return {"inlineData": {"mimeType": mime_type, "data": data}}


def _audio(audio: object, param: str) -> JsonObject:
    fields = audio if isinstance(audio, dict) else {}
    mime_type = _AUDIO_TYPES.get(fields.get("format") or "")
    data = fields.get("data")
    if mime_type is None or not isinstance(data, str) or not data:
        raise _invalid("input_audio needs base64 'data' and a 'format' of wav or mp3", param)
    return {"inlineData": {"mimeType": mime_type, "data": data}}


def _model_parts(msg: JsonObject, param: str, call_names: dict[str, str], needs_signature: bool) -> list[JsonObject]:
    parts = _parts(msg.get("content"), param)
    calls: list[JsonObject] = []
    for k, call in enumerate(msg.get("tool_calls") or ()):
        where = f"{param}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not call.get("id") or not function.get("name"):
            raise _invalid("a tool call needs an id and function.name", where)
        try:
            args = msgspec.json.decode(function.get("arguments") or "{}")
        except (msgspec.DecodeError, TypeError):
            args = None
        if not isinstance(args, dict):
            raise _invalid("function.arguments must be a JSON object encoded as a string", f"{where}.function.arguments")
        call_names[str(call["id"])] = function["name"]
        part: JsonObject = {"functionCall": {"name": function["name"], "args": args}}
        signature = _signature(call)
        if signature:
            part["thoughtSignature"] = signature
        calls.append(part)
    # Only the first call of a turn carries the signature (parallel calls share it).
    if calls and needs_signature and not any("thoughtSignature" in part for part in calls):
        calls[0]["thoughtSignature"] = SKIP_SIGNATURE
    return parts + calls


def _signature(call: JsonObject) -> str | None:
    """The thought signature a reply's tool call carried, as Google's own OpenAI layer spells it."""
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _function_response(msg: JsonObject, param: str, call_names: dict[str, str]) -> JsonObject:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _invalid("a tool message needs a 'tool_call_id'", f"{param}.tool_call_id")
    name = call_names.get(call_id) or msg.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid("a tool message must answer a tool call made earlier in the conversation", f"{param}.tool_call_id")
    return {"functionResponse": {"name": name, "response": _response_object(_text_only(msg.get("content"), param))}}


def _response_object(text: str) -> JsonObject:
    """Gemini wants an object: a JSON object result is the output itself, anything else goes under "output"."""
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        value = None
    return value if isinstance(value, dict) else {"output": text}


# --- generation config and tools ---------------------------------------------


def _generation_config(body: JsonObject) -> JsonObject:
    config: JsonObject = {}
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            config["maxOutputTokens"] = _positive_int(value, name)
            break
    # OpenAI name --> Gemini name; values pass through, Gemini checks their ranges.
    for openai_name, gemini_name in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = body.get(openai_name)
        if value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise _invalid(f"'{openai_name}' must be a number", openai_name)
            config[gemini_name] = value
    n = body.get("n")
    if n is not None:
        config["candidateCount"] = _positive_int(n, "n")
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    config.update(_response_format(body.get("response_format")))
    return config


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _invalid(f"'{name}' must be a positive integer", name)
    return value


def _response_format(fmt: object) -> JsonObject:
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind in (None, "text"):
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema" and isinstance(fmt, dict):
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _invalid("response_format.json_schema needs a 'schema' object", "response_format.json_schema")
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise _invalid("response_format must be text, json_object or json_schema", "response_format")


def _declaration(tool: object, i: int) -> JsonObject:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise _invalid("only function tools with a name are supported by Gemini deployments", f"tools[{i}]")
    out: JsonObject = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        out["parametersJsonSchema"] = function["parameters"]
    return out


def _tool_config(choice: object) -> JsonObject | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]:
        return {"mode": "ANY", "allowedFunctionNames": [function["name"]]}
    raise _invalid("tool_choice must be auto, none, required or a named function", "tool_choice")
