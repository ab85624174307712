"""JSON constraints --> the form a Triton LLM backend decodes under, refusing schemas it would not enforce.

Triton's LLM backends constrain decoding only when a request carries the
constraint in their own form; which form a deployment's model takes is the
deployment's ``structured_outputs`` option:

- ``vllm_backend``: ``sampling_parameters["structured_outputs"]``, vLLM's
  ``StructuredOutputsParams`` as a JSON *string* (the backend ``json.loads``
  it): ``{"json": schema}`` or ``{"json_object": true}``. vLLM backends built on
  vLLM 0.11 and later.
- ``vllm_backend_legacy``: the same object under ``"guided_decoding"``, for
  backends built on older vLLM (``GuidedDecodingParams``).
- ``trtllm``: the ``guided_decoding_guide_type`` (``json_schema``) and
  ``guided_decoding_guide`` (the schema as JSON text) tensors of TensorRT-LLM's
  models; the model needs ``guided_decoding_backend`` set in its config.
- ``none``: the deployment cannot constrain, so a request that needs it is a 400.

Both backends decode with xgrammar by default, which skips some JSON Schema
keywords without a word (vLLM lists them in ``has_xgrammar_unsupported_json_features``).
``check_schema`` walks a schema against what xgrammar enforces, so such a
keyword is an ``InvalidRequest`` naming it before the request leaves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, TypeAlias

from core.errors import InvalidRequest
from serving.base import JsonObject
from serving.structured_outputs import JsonConstraint

StructuredVia: TypeAlias = Literal["none", "vllm_backend", "vllm_backend_legacy", "trtllm"]

# Keywords that describe a value without constraining it.
_ANNOTATIONS = frozenset(
    {"title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated", "readOnly", "writeOnly"}
)
# Keywords xgrammar's JSON-schema converter enforces (alone; combinations are checked below).
_ENFORCED = frozenset(
    {
        "type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions",
        "properties", "required", "additionalProperties", "unevaluatedProperties", "patternProperties",
        "propertyNames", "minProperties", "maxProperties", "items", "prefixItems", "unevaluatedItems",
        "minItems", "maxItems", "minLength", "maxLength", "pattern", "format",
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    }
)  # fmt: skip
_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
_FORMATS = frozenset(
    {
        "email", "date", "time", "date-time", "duration", "ipv4", "ipv6", "hostname", "uuid", "uri",
        "uri-reference", "uri-template", "json-pointer", "relative-json-pointer",
    }
)  # fmt: skip
# Keywords whose value is one subschema, a list of them, or a map of them.
_ONE = ("additionalProperties", "unevaluatedProperties", "propertyNames", "unevaluatedItems", "items")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems", "items")
_NAMED = ("properties", "patternProperties", "$defs", "definitions")


@dataclass(frozen=True, slots=True)
class Guide:
    """A JSON constraint in one backend's form; ``schema`` None means any JSON object."""

    via: Literal["vllm_backend", "vllm_backend_legacy", "trtllm"]
    schema: JsonObject | None

    def sampling_entries(self) -> dict[str, str]:
        """Entries for the vLLM backend's ``sampling_parameters`` JSON."""
        params: JsonObject = {"json_object": True} if self.schema is None else {"json": self.schema}
        key = "structured_outputs" if self.via == "vllm_backend" else "guided_decoding"
        return {key: json.dumps(params, ensure_ascii=False)}

    def trtllm_inputs(self) -> dict[str, str]:
        """TensorRT-LLM's guided-decoding tensors, name --> value.

        Its ``json`` guide type is xgrammar's any-JSON grammar, which allows an
        array; json_object asks for an object, so it goes as that schema.
        """
        schema = self.schema if self.schema is not None else {"type": "object"}
        return {"guided_decoding_guide_type": "json_schema", "guided_decoding_guide": json.dumps(schema, ensure_ascii=False)}


def guide_for(constraint: JsonConstraint | None, via: StructuredVia) -> Guide | None:
    """The constraint in the deployment's form; a 400 naming its parameter when the deployment has none."""
    if constraint is None:
        return None
    if via == "none":
        raise InvalidRequest(
            f"'{constraint.param}' needs constrained decoding, which this Triton deployment does not have"
            " (options.structured_outputs is none)",
            param=constraint.param,
        )
    if constraint.schema is not None:
        check_schema(constraint.schema, constraint.param)
    return Guide(via=via, schema=constraint.schema)


def check_schema(schema: JsonObject, param: str) -> None:
    """Raises ``InvalidRequest`` naming the first keyword the backend's xgrammar would not enforce."""
    _check(schema, "#", param)


def _refuse(keyword: str, path: str, param: str, why: str = "") -> InvalidRequest:
    return InvalidRequest(f"JSON schema keyword '{keyword}' at {path} is not supported on Triton{why}", param=param)


def _check(node: object, path: str, param: str) -> None:
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise InvalidRequest(f"JSON schema at {path} must be an object", param=param)
    unknown = sorted(set(node) - _ENFORCED - _ANNOTATIONS)
    if unknown:
        raise _refuse(unknown[0], path, param)
    _combinations(node, path, param)
    for key in _ONE:
        if isinstance(node.get(key), dict):
            _check(node[key], f"{path}/{key}", param)
    for key in _MANY:
        children = node.get(key)
        if isinstance(children, list):
            for index, child in enumerate(children):
                _check(child, f"{path}/{key}/{index}", param)
    for key in _NAMED:
        children = node.get(key)
        if children is not None and not isinstance(children, dict):
            raise InvalidRequest(f"JSON schema at {path}: '{key}' must be an object", param=param)
        for name, child in (children or {}).items():
            _check(child, f"{path}/{key}/{name}", param)


def _combinations(node: JsonObject, path: str, param: str) -> None:
    """What xgrammar cannot enforce together, as vLLM's ``has_xgrammar_unsupported_json_features`` lists it."""
    kinds = node.get("type")
    if kinds is not None and not all(isinstance(kind, str) and kind in _TYPES for kind in (kinds if isinstance(kinds, list) else [kinds])):
        raise InvalidRequest(f"JSON schema at {path} has an unknown type", param=param)
    ref = node.get("$ref")
    if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
        raise InvalidRequest(f"JSON schema at {path}: only local '#/...' references are supported", param=param)
    fmt = node.get("format")
    if fmt is not None and (not isinstance(fmt, str) or fmt not in _FORMATS):
        raise _refuse("format", path, param, f" (format {str(fmt)[:40]!r})")
    if ("pattern" in node or "format" in node) and ("minLength" in node or "maxLength" in node):
        raise _refuse("minLength" if "minLength" in node else "maxLength", path, param, " together with pattern or format")
    if "propertyNames" in node:
        for other in ("properties", "patternProperties"):
            if other in node:
                raise _refuse("propertyNames", path, param, f" together with {other}")
        if node.get("unevaluatedProperties", True) is not True:
            raise _refuse("propertyNames", path, param, " together with unevaluatedProperties")
    patterns = node.get("patternProperties")
    if isinstance(patterns, dict) and ("properties" in node or len(patterns) > 1):
        raise _refuse("patternProperties", path, param, " together with properties or another pattern")
    parts = node.get("allOf")
    if isinstance(parts, list) and len(parts) > 1:
        raise _refuse("allOf", path, param, " with more than one schema")
