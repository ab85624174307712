"""The request decoders take any bytes: a validated request or an InvalidRequest, nothing else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import InvalidRequest
from router.decode import MAX_JSON_DEPTH, decode_body, decode_object, nesting_exceeds
from router.wire import ChatRequest, CompletionRequest, EmbeddingRequest
from tests.unit.properties.strategies import (
    encode,
    json_objects,
    json_values,
    mutated_json,
)

KINDS = [ChatRequest, CompletionRequest, EmbeddingRequest]

_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "wizard"]), "content": json_values}
)
chat_like = st.fixed_dictionaries(
    {"model": st.text(max_size=10) | json_values, "messages": st.lists(_message, max_size=3) | json_values},
    optional={"stream": json_values, "max_tokens": json_values, "tools": json_values, "n": json_values, "extra": json_values},
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@settings(max_examples=120, deadline=None)
@given(st.binary(max_size=300) | mutated_json(chat_like) | st.builds(encode, json_values))
@pytest.mark.parametrize("kind", KINDS)
def test_any_bytes_decode_or_fail_with_a_400(kind: type, body: bytes) -> None:
    try:
        raw, request, unknown = decode_body(body, kind)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message
    else:
        assert isinstance(raw, dict) and request.model == raw["model"] and unknown >= 0


@settings(max_examples=120, deadline=None)
@given(chat_like)
def test_chat_shaped_objects_decode_or_name_what_is_wrong(body: dict[str, Any]) -> None:
    try:
        decode_body(encode(body), ChatRequest)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.code


@settings(max_examples=120, deadline=None)
@given(json_values, st.integers(1, 3 * MAX_JSON_DEPTH))
def test_nesting_limit_is_exact_at_any_depth(leaf: Any, depth: int) -> None:
    value: Any = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    body = encode({"model": "m", "x": value})
    deep = _depth({"x": value}) > MAX_JSON_DEPTH
    try:
        decode_object(body)
    except InvalidRequest as exc:
        assert deep and str(MAX_JSON_DEPTH) in exc.message
    else:
        assert not deep


@given(json_objects)
def test_nesting_check_agrees_with_a_recursive_count(value: dict[str, Any]) -> None:
    for limit in range(1, 8):
        assert nesting_exceeds(value, limit) == (_depth(value) > limit)
