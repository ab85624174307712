"""Hypothesis strategies shared by the property tests: JSON values and near-JSON bytes."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st

_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=40)
json_values: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=40,
)
json_objects: st.SearchStrategy[dict[str, Any]] = st.dictionaries(st.text(max_size=12), json_values, max_size=8)


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


@st.composite
def mutated_json(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> bytes:
    """Valid JSON with bytes flipped, cut, or spliced: what a broken client or a fuzzer sends."""
    raw = bytearray(encode(draw(base)))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        if action == "flip" and raw:
            raw[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del raw[at:]
        else:
            raw[at:at] = draw(st.sampled_from([b"[", b"{", b'"', b"\\", b"\x00", b"\xff", b"1e999", b"]]", b",", b":"]))
    return bytes(raw)
