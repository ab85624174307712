"""JSON constraints --> llama.cpp grammars, refusing what the grammar would not enforce.

llama-cpp-python turns a JSON schema into a GBNF grammar with its own converter
(``llama_cpp.llama_grammar``), which silently skips every keyword it does not
know (``minimum``, ``multipleOf``, ``uniqueItems``, unknown ``format``s, ...) and
silently falls back to any JSON when conversion fails. Here each schema node is
checked against the branch the converter will take for it, so a keyword that
would be skipped is an ``InvalidRequest`` before the request queues.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from core.errors import InvalidRequest
from serving.base import JsonObject
from serving.structured_outputs import JsonConstraint

if TYPE_CHECKING:
    from llama_cpp.llama_grammar import LlamaGrammar

# Keywords that describe a value without constraining it.
_ANNOTATIONS = frozenset(
    {"title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated", "readOnly", "writeOnly"}
)
_DEFS = ("$defs", "definitions")
_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
# String formats the converter has grammar rules for.
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
# What each of the converter's branches reads; anything else on that node would be skipped.
_UNION = frozenset({"anyOf", "oneOf"})
_OBJECT = frozenset({"type", "properties", "required", "additionalProperties"})
_ARRAY = frozenset({"type", "items", "minItems", "maxItems"})
_SIZED_STRING = frozenset({"type", "minLength", "maxLength"})


def json_grammar(constraint: JsonConstraint) -> LlamaGrammar:
    """The grammar that holds generation to ``constraint``; llama_cpp is imported only here."""
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

    if constraint.schema is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    check_schema(constraint.schema, constraint.param)
    try:
        # The converter rewrites $refs in place, so it gets its own copy.
        return LlamaGrammar.from_string(json_schema_to_gbnf(json.dumps(constraint.schema)), verbose=False)
    except (ValueError, AssertionError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidRequest(
            f"llama.cpp cannot turn the JSON schema into a grammar ({type(exc).__name__})", param=constraint.param
        ) from None


def check_schema(schema: JsonObject, param: str) -> None:
    """Raises ``InvalidRequest`` naming the first keyword llama.cpp's grammar would not enforce."""
    _check(schema, "#", param)


def _check(node: object, path: str, param: str) -> None:
    if not isinstance(node, dict):
        raise InvalidRequest(f"JSON schema at {path} must be an object", param=param)
    keys = set(node) - _ANNOTATIONS - set(_DEFS)
    used = _branch(node, path, param)
    skipped = sorted(keys - used)
    if skipped:
        raise InvalidRequest(f"JSON schema keyword '{skipped[0]}' at {path} is not supported by llama.cpp", param=param)
    for key in _DEFS:
        for name, target in (node.get(key) or {}).items():
            _check(target, f"{path}/{key}/{name}", param)
    for name, child in (node.get("properties") or {}).items():
        _check(child, f"{path}/properties/{name}", param)
    for key in ("anyOf", "oneOf", "prefixItems"):
        for index, child in enumerate(node.get(key) or []):
            _check(child, f"{path}/{key}/{index}", param)
    items, extra = node.get("items"), node.get("additionalProperties")
    for index, child in enumerate(items if isinstance(items, list) else []):
        _check(child, f"{path}/items/{index}", param)
    if isinstance(items, dict):
        _check(items, f"{path}/items", param)
    if isinstance(extra, dict):
        _check(extra, f"{path}/additionalProperties", param)


def _branch(node: JsonObject, path: str, param: str) -> frozenset[str]:
    """The keywords the converter reads for ``node``, in the order it picks its branch."""
    kind = node.get("type")
    if "$ref" in node:
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise InvalidRequest(f"JSON schema at {path}: only local '#/...' references are supported", param=param)
        return frozenset({"$ref"})
    if _UNION & set(node):
        return frozenset(_UNION & set(node))
    if isinstance(kind, list):
        if not set(kind) <= _TYPES:
            raise InvalidRequest(f"JSON schema at {path} has an unknown type", param=param)
        return frozenset({"type"})
    if "const" in node or "enum" in node:
        return frozenset({"type", "const" if "const" in node else "enum"})
    if kind is not None and kind not in _TYPES:
        raise InvalidRequest(f"JSON schema at {path} has an unknown type", param=param)
    if kind in (None, "object") and ("properties" in node or "additionalProperties" in node):
        properties = node.get("properties") or {}
        required = node.get("required") or []
        if not isinstance(required, list) or not set(required) <= set(properties):
            raise InvalidRequest(f"JSON schema at {path}: 'required' must list names from 'properties'", param=param)
        return _OBJECT
    if kind in (None, "array") and "prefixItems" in node:
        return frozenset({"type", "prefixItems"})
    if kind in (None, "array") and "items" in node:
        return _ARRAY if isinstance(node["items"], dict) else frozenset({"type", "items"})
    if kind in (None, "string") and "pattern" in node:
        return frozenset({"type", "pattern"})
    if kind in (None, "string") and "format" in node:
        if node["format"] not in _FORMATS:
            raise InvalidRequest(f"JSON schema at {path}: format '{node['format']}' is not supported by llama.cpp", param=param)
        return frozenset({"type", "format"})
    if kind == "string" and ("minLength" in node or "maxLength" in node):
        return _SIZED_STRING
    return frozenset({"type"})
