"""JSON that a JSON Schema accepts, for the fake upstream's structured outputs: deterministic, no I/O.

Covers what response formats use (and Pydantic generates): ``type`` (one or a
list), ``object`` with ``properties`` (every property is filled, so ``required``
is met), ``array`` with ``items`` / ``prefixItems`` and item counts, strings
with ``format``, ``enum`` and length bounds, numbers and integers with
bounds, ``const``, ``anyOf`` / ``oneOf`` / ``allOf``, and local ``$ref``
(``#/$defs/...``). A recursive schema is cut off at ``MAX_DEPTH``: past it
arrays are empty, a nullable value is null, and only required properties are
filled.
"""

from __future__ import annotations

import math
from typing import Any

JsonObject = dict[str, Any]

MAX_DEPTH = 8
# A schema that recurses through required properties cannot be met at all; this stops the walk.
_GIVE_UP = 4 * MAX_DEPTH
_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "duration": "P1D",
    "email": "fake@example.com",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/fake",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def sample_json(schema: object, root: object = None, depth: int = 0) -> object:
    """A value ``schema`` accepts; ``root`` is the document ``$ref`` pointers resolve in (``schema`` itself at the top)."""
    if not isinstance(schema, dict) or depth > _GIVE_UP:
        return {}
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return sample_json(_resolve(root, ref), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        options = [o for o in schema.get(key) or () if isinstance(o, dict)]
        if options:
            nullable = [o for o in options if o.get("type") == "null"]
            return sample_json(nullable[0] if nullable and depth >= MAX_DEPTH else options[0], root, depth)
    parts = schema.get("allOf")
    if isinstance(parts, list) and parts:
        merged: JsonObject = {k: v for k, v in schema.items() if k != "allOf"}
        for part in parts:
            resolved = _resolve(root, part["$ref"]) if isinstance(part, dict) and isinstance(part.get("$ref"), str) else part
            if isinstance(resolved, dict):
                _merge(merged, resolved)
        return sample_json(merged, root, depth)
    return _typed(schema, _kind(schema, depth), root, depth)


def _merge(into: JsonObject, part: JsonObject) -> None:
    """``allOf``: every part's properties and required names together; other keywords, the last part's."""
    for key, value in part.items():
        if key == "properties" and isinstance(value, dict):
            into["properties"] = {**(into.get("properties") or {}), **value}
        elif key == "required" and isinstance(value, list):
            into["required"] = [*(into.get("required") or []), *value]
        else:
            into[key] = value


def _kind(schema: JsonObject, depth: int) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        real = [k for k in kind if isinstance(k, str) and k != "null"]
        return "null" if (depth >= MAX_DEPTH and "null" in kind) or not real else real[0]
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "any"


def _typed(schema: JsonObject, kind: str, root: object, depth: int) -> object:
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            return {}
        required = schema.get("required") or ()
        deep = depth >= MAX_DEPTH
        return {name: sample_json(sub, root, depth + 1) for name, sub in properties.items() if not deep or name in required}
    if kind == "array":
        return _array(schema, root, depth)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return {}


def _array(schema: JsonObject, root: object, depth: int) -> list[object]:
    prefix = [s for s in schema.get("prefixItems") or () if isinstance(s, dict)]
    low = schema.get("minItems")
    high = schema.get("maxItems")
    count = max(low if isinstance(low, int) else 0, 0 if depth >= MAX_DEPTH else 1, len(prefix))
    if isinstance(high, int):
        count = min(count, high)
    items = schema.get("items")
    return [sample_json(prefix[i] if i < len(prefix) else items, root, depth + 1) for i in range(count)]


def _string(schema: JsonObject) -> str:
    fmt = schema.get("format")
    text = _FORMATS.get(fmt, "fake") if isinstance(fmt, str) else "fake"
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        text = (text * (low // len(text) + 1))[:low]
    if isinstance(high, int):
        text = text[: max(high, 0)]
    return text


def _number(schema: JsonObject, integer: bool) -> int | float:
    value: float = 1 if integer else 1.5
    step = 1 if integer else 0.5
    low, high = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(above, (int, float)) and not isinstance(above, bool) and value <= above:
        value = above + step
    if isinstance(low, (int, float)) and not isinstance(low, bool) and value < low:
        value = low
    if isinstance(below, (int, float)) and not isinstance(below, bool) and value >= below:
        value = below - step
    if isinstance(high, (int, float)) and not isinstance(high, bool) and value > high:
        value = high
    if not integer:
        return value
    whole = math.ceil(value)
    # Rounding up must not step over an upper bound that is not a whole number.
    if isinstance(high, (int, float)) and not isinstance(high, bool) and whole > high:
        whole = math.floor(high)
    return whole


def _resolve(root: object, ref: str) -> object:
    """A local JSON pointer (``#/$defs/Name``); anything else resolves to an empty schema."""
    if not ref.startswith("#"):
        return {}
    node = root
    for token in filter(None, ref[1:].split("/")):
        key = token.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or key not in node:
            return {}
        node = node[key]
    return node
