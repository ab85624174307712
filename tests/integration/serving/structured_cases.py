"""Schemas, tools and stream readers shared by the self-hosted structured-output and tool tests."""

from __future__ import annotations

import json
from typing import Any

from serving.base import StreamChunk


def person_schema(*, integer_bounds: bool) -> dict[str, Any]:
    """Nested object, array, enum, integer, boolean and required, every string and array bounded.

    Bounds keep a random-weight model from writing one string forever; llama.cpp's
    grammar cannot bound integers, so its tests leave those out.
    """
    age: dict[str, Any] = {"type": "integer"}
    zip_code: dict[str, Any] = {"type": "integer"}
    if integer_bounds:
        age |= {"minimum": 0, "maximum": 120}
        zip_code |= {"minimum": 0, "maximum": 99999}
    address = {
        "type": "object",
        "properties": {"zip": zip_code, "city": {"type": "string", "maxLength": 12}},
        "required": ["zip", "city"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": age,
            "member": {"type": "boolean"},
            "color": {"enum": ["red", "green", "blue"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
            "address": address,
        },
        "required": ["name", "age", "member", "color", "tags", "address"],
        "additionalProperties": False,
    }


def json_schema_format(schema: dict[str, Any], *, strict: bool | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "person", "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


def weather_tools(*, integer_bounds: bool) -> list[dict[str, Any]]:
    days: dict[str, Any] = {"type": "integer"}
    if integer_bounds:
        days |= {"minimum": 1, "maximum": 7}
    weather = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": days,
        },
        "required": ["city", "unit", "days"],
        "additionalProperties": False,
    }
    clock = {
        "type": "object",
        "properties": {"zone": {"enum": ["UTC", "CET"]}, "seconds": {"type": "boolean"}},
        "required": ["zone", "seconds"],
        "additionalProperties": False,
    }
    return [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast", "parameters": weather}},
        {"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": clock}},
    ]


def parameters_of(tools: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(tool["function"]["parameters"] for tool in tools if tool["function"]["name"] == name)


def streamed_calls(chunks: list[StreamChunk]) -> tuple[list[dict[str, Any]], str, list[str]]:
    """(tool calls accumulated by index as an OpenAI client does, content text, finish reasons)."""
    calls: dict[int, dict[str, Any]] = {}
    content: list[str] = []
    reasons: list[str] = []
    for chunk in chunks:
        for choice in json.loads(chunk.data)["choices"]:
            delta = choice["delta"]
            content.append(delta.get("content") or "")
            if choice.get("finish_reason"):
                reasons.append(choice["finish_reason"])
            for entry in delta.get("tool_calls") or []:
                call = calls.setdefault(entry["index"], {"id": None, "name": None, "arguments": ""})
                function = entry.get("function") or {}
                # An id and a name arrive once, in the call's first delta.
                if entry.get("id"):
                    assert call["id"] is None
                    call["id"] = entry["id"]
                if function.get("name"):
                    assert call["name"] is None
                    call["name"] = function["name"]
                call["arguments"] += function.get("arguments") or ""
    return [calls[index] for index in sorted(calls)], "".join(content), reasons
