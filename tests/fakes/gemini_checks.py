"""What the fake Gemini refuses: the request shapes Google's API rejects.

Each check raises ``WireError`` with a message in Google's wording; the fake
answers it as a 400 ``INVALID_ARGUMENT``. Field names are checked against
Google's camelCase JSON names (the real API also parses snake_case, but the
engine must write camelCase, so the fake is stricter there).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import Any

_FIELDS = {
    "request": {"contents", "tools", "toolConfig", "safetySettings", "systemInstruction", "generationConfig", "cachedContent"},
    "content": {"role", "parts"},
    "part": {"text", "inlineData", "fileData", "functionCall", "functionResponse", "thought", "thoughtSignature"},
    "inlineData": {"mimeType", "data"},
    "functionCall": {"id", "name", "args"},
    "functionResponse": {"id", "name", "response"},
    "tool": {"functionDeclarations", "googleSearch", "codeExecution", "urlContext"},
    "functionDeclaration": {"name", "description", "parameters", "parametersJsonSchema", "behavior"},
    "toolConfig": {"functionCallingConfig"},
    "functionCallingConfig": {"mode", "allowedFunctionNames"},
    "safetySetting": {"category", "threshold"},
    "generationConfig": {
        "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "candidateCount",
        "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
        "responseLogprobs", "logprobs", "thinkingConfig",
    },
    "embedRequest": {"model", "content", "taskType", "title", "outputDimensionality"},
}  # fmt: skip
_DATA_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse")
_MODES = {"AUTO", "ANY", "NONE", "VALIDATED"}
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_THRESHOLDS = {"BLOCK_NONE", "BLOCK_ONLY_HIGH", "BLOCK_MEDIUM_AND_ABOVE", "BLOCK_LOW_AND_ABOVE", "OFF"}
# What a Gemini 3 model accepts as a replayed function call's signature.
SKIP_SIGNATURE = "skip_thought_signature_validator"


class WireError(Exception):
    pass


def _object(value: Any, kind: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"Invalid value at '{where}': expected an object")
    for name in value:
        if name not in _FIELDS[kind]:
            raise WireError(f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field.")
    return value


def check_generate(body: Any, *, signatures: set[str] | None) -> None:
    """A generateContent body; ``signatures``: the thought signatures a Gemini 3 model accepts (None: any model)."""
    _object(body, "request", "request")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise WireError("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        _content(content, f"contents[{i}]", signatures)
    if "systemInstruction" in body:
        system = _object(body["systemInstruction"], "content", "system_instruction")
        if system.get("role") not in (None, "system"):
            raise WireError("system_instruction: role must be empty or 'system'")
        for j, part in enumerate(system.get("parts") or [None]):
            if set(_object(part, "part", f"system_instruction.parts[{j}]")) != {"text"}:
                raise WireError("system_instruction: only text parts are allowed")
    names = _tools(body.get("tools", []))
    _tool_config(body.get("toolConfig"), names)
    _generation_config(body.get("generationConfig", {}))
    for k, setting in enumerate(body.get("safetySettings", [])):
        setting = _object(setting, "safetySetting", f"safety_settings[{k}]")
        if not str(setting.get("category", "")).startswith("HARM_CATEGORY_") or setting.get("threshold") not in _THRESHOLDS:
            raise WireError(f"Invalid value at 'safety_settings[{k}]'")


def _content(content: Any, where: str, signatures: set[str] | None) -> None:
    content = _object(content, "content", where)
    role = content.get("role")
    if role not in ("user", "model"):
        raise WireError(f"Please use a valid role: user, model. (at '{where}.role')")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise WireError(f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.")
    calls = []
    for j, part in enumerate(parts):
        part = _object(part, "part", f"{where}.parts[{j}]")
        present = [name for name in _DATA_FIELDS if name in part]
        if len(present) != 1:
            raise WireError(f"{where}.parts[{j}]: a part must hold exactly one of text, inlineData, functionCall, ...")
        _part_data(present[0], part[present[0]], role, f"{where}.parts[{j}]")
        if present[0] == "functionCall":
            calls.append(part)
    # Gemini 3: the first function call of each model turn carries its thought signature.
    if signatures is not None and calls and calls[0].get("thoughtSignature") not in signatures:
        raise WireError(f"Function call is missing a thought_signature in functionCall parts. ({where})")


def _part_data(kind: str, value: Any, role: str, where: str) -> None:
    if kind == "text" and not isinstance(value, str):
        raise WireError(f"Invalid value at '{where}.text'")
    if kind == "inlineData":
        blob = _object(value, "inlineData", f"{where}.inline_data")
        try:
            base64.b64decode(blob.get("data", ""), validate=True)
        except (binascii.Error, ValueError):
            raise WireError(f"Invalid value at '{where}.inline_data.data': Base64 decoding failed") from None
        if "/" not in str(blob.get("mimeType", "")):
            raise WireError(f"{where}.inline_data: mimeType is required")
    if kind == "functionCall":
        call = _object(value, "functionCall", f"{where}.function_call")
        if role != "model" or not call.get("name") or not isinstance(call.get("args", {}), dict):
            raise WireError(f"{where}.function_call: a model turn's call needs a name and object args")
    if kind == "functionResponse":
        response = _object(value, "functionResponse", f"{where}.function_response")
        if not response.get("name"):
            raise WireError(f"* GenerateContentRequest.{where}.function_response.name: Name cannot be empty.")
        if role != "user" or not isinstance(response.get("response"), dict):
            raise WireError(f"{where}.function_response: a user turn's response must be an object")


def _tools(tools: Any) -> list[str]:
    names: list[str] = []
    for i, tool in enumerate(tools):
        for j, declaration in enumerate(_object(tool, "tool", f"tools[{i}]").get("functionDeclarations", [])):
            declaration = _object(declaration, "functionDeclaration", f"tools[{i}].function_declarations[{j}]")
            if not _FUNCTION_NAME.match(str(declaration.get("name", ""))):
                raise WireError(f"* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: Invalid function name.")
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                raise WireError("parameters and parameters_json_schema are mutually exclusive")
            names.append(declaration["name"])
    return names


def _tool_config(config: Any, names: list[str]) -> None:
    if config is None:
        return
    calling = _object(_object(config, "toolConfig", "tool_config")["functionCallingConfig"], "functionCallingConfig", "tool_config")
    if calling.get("mode") not in _MODES:
        raise WireError("Invalid value at 'tool_config.function_calling_config.mode'")
    allowed = calling.get("allowedFunctionNames")
    if allowed is not None and (calling["mode"] != "ANY" or not set(allowed) <= set(names)):
        raise WireError("allowed_function_names must name declared functions and only be set with mode ANY")


def _generation_config(config: Any) -> None:
    config = _object(config, "generationConfig", "generation_config")
    checks: dict[str, Callable[[Any], bool]] = {
        "maxOutputTokens": lambda v: isinstance(v, int) and v >= 1,
        "candidateCount": lambda v: isinstance(v, int) and 1 <= v <= 8,
        "temperature": lambda v: isinstance(v, (int, float)) and 0 <= v <= 2,
        "topP": lambda v: isinstance(v, (int, float)) and 0 <= v <= 1,
        "stopSequences": lambda v: isinstance(v, list) and len(v) <= 5 and all(isinstance(s, str) for s in v),
        "responseMimeType": lambda v: v in ("text/plain", "application/json", "text/x.enum"),
        "responseJsonSchema": lambda v: isinstance(v, dict) and config.get("responseMimeType") == "application/json",
    }
    for name, ok in checks.items():
        if name in config and not ok(config[name]):
            raise WireError(f"Invalid value at 'generation_config.{name}'")
    if "responseSchema" in config and "responseJsonSchema" in config:
        raise WireError("response_schema and response_json_schema are mutually exclusive")


def check_batch_embed(body: Any, model: str) -> list[str]:
    """A batchEmbedContents body --> its texts; each request must name the model of the URL."""
    if not isinstance(body, dict) or set(body) != {"requests"} or not isinstance(body["requests"], list):
        raise WireError('Invalid JSON payload received. Expected a single "requests" field.')
    texts: list[str] = []
    for i, request in enumerate(body["requests"]):
        request = _object(request, "embedRequest", f"requests[{i}]")
        if request.get("model") != f"models/{model}":
            raise WireError(f"* BatchEmbedContentsRequest.model: requests[{i}].model must be models/{model}")
        parts = _object(request.get("content"), "content", f"requests[{i}].content").get("parts") or []
        texts.append("".join(_object(p, "part", f"requests[{i}].content.parts")["text"] for p in parts))
    return texts
