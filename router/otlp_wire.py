"""Finished spans as an OTLP ``ExportTraceServiceRequest``, written straight in protobuf's wire format.

opentelemetry's encoder builds a protobuf message object for every span,
attribute and value, and hashes each span's resource (a JSON dump of its
attributes) to group the spans: measured under load with tracing on, that
encoding on the exporter's thread took as much CPU as the requests
themselves, and held the GIL the event loop needed. This writes the same
message as bytes: each attribute key's header once per process, each
resource and scope once per batch, the rest with ``bytes`` joins and
``struct``.

What it writes is what ``opentelemetry.exporter.otlp.proto.common.trace_encoder
.encode_spans`` builds, field for field (``tests/unit/router/test_otlp_wire.py``
parses both and compares): the same values, defaults left out as proto3 leaves
them, a span's status always present, an attribute whose value cannot be
encoded left out and logged. One difference in form: spans are grouped by
their resource and scope objects, not by equal ones, so two equal resources
that are different objects (never, with one tracer provider) would be two
entries.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("sluicegate.tracing")

__all__ = ["encode_spans"]

_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_FIXED32 = struct.Struct("<I").pack
# Span.flags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, and SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK for a remote parent.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64: two's complement, ten bytes
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` is the key byte (field number << 3 | 2)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _string(tag: int, text: str) -> bytes:
    return _field(tag, text.encode())


# --- attributes --------------------------------------------------------------------------

# key --> its KeyValue.key field, encoded once
_KEYS: dict[str, bytes] = {}
_KEYS_MAX = 4096  # attribute keys are few; a process that makes them up gets no more cached


def _any_value(value: Any) -> bytes:
    """An AnyValue message's body (a oneof: its member is written even when it is the default)."""
    if value is None:
        return b""
    if value is True:
        return b"\x10\x01"
    if value is False:
        return b"\x10\x00"
    if isinstance(value, str):
        return _string(0x0A, value)
    if isinstance(value, int):
        if not -(1 << 63) <= value < 1 << 63:
            raise ValueError("an int attribute outside int64")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join(_field(0x0A, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(0x32, b"".join(_field(0x0A, _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    head = _KEYS.get(key)
    if head is None:
        head = _string(0x0A, key)
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[key] = head
    return head + _field(0x12, _any_value(value))


def _attributes(tag: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Each attribute as a repeated KeyValue field ``tag``."""
    if not attributes:
        return b""
    parts = []
    for key, value in attributes.items():
        try:
            parts.append(_field(tag, _key_value(key, value)))
        except Exception as exc:  # noqa: BLE001 - as opentelemetry's encoder: the attribute is left out, logged
            log.error("a span attribute could not be encoded: %s (%s)", key, type(exc).__name__)
    return b"".join(parts)


# --- spans ------------------------------------------------------------------------------


def _flags(context: Any) -> bytes:
    """A span's or a link's flags (fixed32): whether ``context`` (the parent, or the linked span) is remote."""
    return _FIXED32(_HAS_IS_REMOTE | _IS_REMOTE if context is not None and context.is_remote else _HAS_IS_REMOTE)


def _span(span: Any) -> bytes:
    context = span.get_span_context()
    parts = [
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
    ]
    state = context.trace_state
    if state:
        parts.append(_string(0x1A, ",".join(f"{key}={value}" for key, value in state.items())))
    parent = span.parent
    if parent:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(_string(0x2A, span.name))
    parts.append(b"\x30" + _varint(span.kind.value + 1))  # SpanKind: INTERNAL (0) is SPAN_KIND_INTERNAL (1), ...
    if span.start_time:
        parts.append(b"\x39" + _FIXED64(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _FIXED64(span.end_time))
    parts.append(_attributes(0x4A, span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = b"\x09" + _FIXED64(event.timestamp) if event.timestamp else b""
        if event.name:
            body += _string(0x12, event.name)
        body += _attributes(0x1A, event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_field(0x5A, body))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        linked = link.context
        body = b"\x0a\x10" + linked.trace_id.to_bytes(16, "big") + b"\x12\x08" + linked.span_id.to_bytes(8, "big")
        body += _attributes(0x22, link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        parts.append(_field(0x6A, body + b"\x35" + _flags(linked)))
    if span.dropped_links:
        parts.append(b"\x70" + _varint(span.dropped_links))
    status = span.status
    if status is not None:
        body = _string(0x12, status.description) if status.description else b""
        code = status.status_code.value
        parts.append(_field(0x7A, body + (b"\x18" + _varint(code) if code else b"")))
    parts.append(b"\x85\x01" + _flags(parent))  # Span.flags: field 16
    return b"".join(parts)


def _resource(resource: Any) -> bytes:
    """A ResourceSpans' resource field (always present)."""
    return _field(0x0A, _attributes(0x0A, resource.attributes))


def _scope(scope: Any) -> bytes:
    """A ScopeSpans' scope field (always present; empty without a scope)."""
    if scope is None:
        return b"\x0a\x00"
    body = b""
    if scope.name:
        body += _string(0x0A, scope.name)
    if scope.version:
        body += _string(0x12, scope.version)
    body += _attributes(0x1A, scope.attributes)
    return _field(0x0A, body)


def encode_spans(spans: Sequence[Any]) -> bytes:
    """``ReadableSpan``s as a serialized ``ExportTraceServiceRequest``."""
    # resource's id --> (resource, scope's id --> (scope, encoded spans)), in the order first seen
    grouped: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        scopes = grouped.get(id(resource))
        if scopes is None:
            scopes = grouped[id(resource)] = (resource, {})
        entry = scopes[1].get(id(scope))
        if entry is None:
            entry = scopes[1][id(scope)] = (scope, [])
        entry[1].append(_field(0x12, _span(span)))
    out = []
    for resource, by_scope in grouped.values():
        body = [_resource(resource)]
        for scope, encoded in by_scope.values():
            tail = _string(0x1A, scope.schema_url) if scope is not None and scope.schema_url else b""
            body.append(_field(0x12, _scope(scope) + b"".join(encoded) + tail))
        if resource.schema_url:
            body.append(_string(0x1A, resource.schema_url))
        out.append(_field(0x0A, b"".join(body)))
    return b"".join(out)
