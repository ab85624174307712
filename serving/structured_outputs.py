"""OpenAI ``response_format`` and ``tools``/``tool_choice`` --> what a self-hosted engine must constrain.

Shared by the in-process engines (vLLM, llama.cpp); pure functions over plain
JSON, so every bad value is an ``InvalidRequest`` naming its parameter before a
request reaches an engine. Nothing here imports an engine.

A forced tool call (``tool_choice`` ``required`` or a named function) becomes a
JSON schema the engine decodes under: an array of ``{"name", "arguments"}``
objects, ``name`` listed first so a stream can announce each call before its
arguments arrive (``serving.tool_call_text`` reads it back).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from core.errors import InvalidRequest
from serving.base import JsonObject

_RESPONSE_FORMAT = "response_format"
# Where JSON Schema keeps definitions that ``$ref`` points at.
_DEFS_KEYS = ("$defs", "definitions")


@dataclass(frozen=True, slots=True)
class JsonConstraint:
    """The output must be JSON: any object when ``schema`` is None, else valid against ``schema``."""

    schema: JsonObject | None
    # The request field the constraint came from, named in errors about it.
    param: str


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """What the request's tools ask of the engine."""

    # Function tools as the chat template renders them.
    tools: list[JsonObject]
    # none: tools hidden from the model; auto: the model may call; forced: it must call one of ``names``.
    mode: Literal["none", "auto", "forced"]
    names: tuple[str, ...]
    parallel: bool


# --- response_format ---------------------------------------------------------------


def response_constraint(body: JsonObject) -> JsonConstraint | None:
    """``response_format`` --> a JSON constraint, or None for free text."""
    response_format = body.get(_RESPONSE_FORMAT)
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonConstraint(schema=None, param=_RESPONSE_FORMAT)
    if kind != "json_schema":
        raise InvalidRequest("'response_format.type' must be text, json_object or json_schema", param=_RESPONSE_FORMAT)
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest("'response_format.json_schema' must be an object with name and schema", param=_RESPONSE_FORMAT)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("'response_format.json_schema.name' must be a non-empty string", param=_RESPONSE_FORMAT)
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest("'response_format.json_schema.strict' must be a boolean", param=_RESPONSE_FORMAT)
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("'response_format.json_schema.schema' must be a JSON schema object", param=_RESPONSE_FORMAT)
    # Self-hosted engines always decode under the schema, so strict or not the output conforms.
    return JsonConstraint(schema=schema, param=_RESPONSE_FORMAT)


# --- tools -----------------------------------------------------------------------------


def tool_plan(body: JsonObject) -> ToolPlan | None:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` checked together; None without tools."""
    tools = _tools(body.get("tools"))
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    names = tuple(tool["function"]["name"] for tool in tools)
    if choice is None or choice in ("auto", "none"):
        if not tools:
            return None
        return ToolPlan(tools=tools, mode="auto" if choice in (None, "auto") else "none", names=names, parallel=parallel is not False)
    if not tools:
        raise InvalidRequest("'tool_choice' needs 'tools'", param="tool_choice")
    if choice == "required":
        return ToolPlan(tools=tools, mode="forced", names=names, parallel=parallel is not False)
    name = _named_choice(choice)
    if name not in names:
        raise InvalidRequest("'tool_choice' names a function that is not in 'tools'", param="tool_choice")
    return ToolPlan(tools=tools, mode="forced", names=(name,), parallel=False)


def _tools(tools: object) -> list[JsonObject]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array of function tools", param="tools")
    seen: set[str] = set()
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequest(f"tools[{index}] must be a function tool", param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"tools[{index}].function.name must be a non-empty string", param="tools")
        if name in seen:
            raise InvalidRequest(f"tools[{index}] repeats the function name of an earlier tool", param="tools")
        seen.add(name)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"tools[{index}].function.parameters must be a JSON schema object", param="tools")
    return tools


def _named_choice(choice: object) -> str:
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest(
            "'tool_choice' must be none, auto, required or {type: function, function: {name}}", param="tool_choice"
        )
    return name


def forced_call_schema(plan: ToolPlan) -> JsonObject:
    """The JSON schema a forced call decodes under: ``[{"name": ..., "arguments": {...}}, ...]``."""
    by_name = {tool["function"]["name"]: tool["function"] for tool in plan.tools}
    definitions: JsonObject = {}
    variants: list[JsonObject] = []
    for name in plan.names:
        parameters = dict(by_name[name].get("parameters") or {"type": "object"})
        # Nested under the array, a tool's own ``#/$defs/...`` refs must find their targets at the root.
        for key in _DEFS_KEYS:
            for def_name, target in (parameters.pop(key, None) or {}).items():
                if definitions.setdefault(f"{key}/{def_name}", target) != target:
                    raise InvalidRequest(f"tools define '{def_name}' twice with different schemas", param="tools")
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"enum": [name]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    schema: JsonObject = {"type": "array", "items": variants[0] if len(variants) == 1 else {"anyOf": variants}, "minItems": 1}
    if not plan.parallel:
        schema["maxItems"] = 1
    for path, target in definitions.items():
        key, def_name = path.split("/", 1)
        schema.setdefault(key, {})[def_name] = target
    return schema


# --- messages ------------------------------------------------------------------------------


def template_tool_calls(message: JsonObject, param: str) -> list[JsonObject] | None:
    """An assistant message's ``tool_calls`` as chat templates expect them: arguments as objects, not JSON text."""
    calls = message.get("tool_calls")
    if calls is None:
        return None
    if not isinstance(calls, list):
        raise InvalidRequest(f"{param}.tool_calls must be an array", param=param)
    rendered: list[JsonObject] = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"{param}.tool_calls entries must be function calls with a name", param=param)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                raise InvalidRequest(f"{param}.tool_calls arguments must be JSON", param=param) from None
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"{param}.tool_calls arguments must be a JSON object", param=param)
        rendered.append({**call, "type": "function", "function": {**function, "arguments": arguments}})
    return rendered
