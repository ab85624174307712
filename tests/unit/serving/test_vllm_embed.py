"""OpenAI embeddings request checks for the vLLM engine (serving.vllm_embed, the parts without vLLM)."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import InvalidRequest
from serving.vllm_embed import MAX_INPUTS, as_base64, check_lengths, embedding_inputs


def test_every_openai_input_form() -> None:
    assert embedding_inputs({"input": "hi"}) == ["hi"]
    assert embedding_inputs({"input": ["a", "b"]}) == ["a", "b"]
    assert embedding_inputs({"input": [5, 6, 7]}) == [[5, 6, 7]]
    assert embedding_inputs({"input": [[5], [6, 7]]}) == [[5], [6, 7]]
    assert len(embedding_inputs({"input": ["x"] * MAX_INPUTS})) == MAX_INPUTS


@pytest.mark.parametrize(
    "value",
    [None, "", [], ["a", ""], ["a", 1], [1, -2], [True], [[1], []], [[1], "a"], {"text": "a"}, ["x"] * (MAX_INPUTS + 1)],
)
def test_bad_inputs_are_a_400(value: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        embedding_inputs({"input": value})
    assert caught.value.param == "input"


def test_encoding_format() -> None:
    assert not as_base64({}) and not as_base64({"encoding_format": "float"})
    assert as_base64({"encoding_format": "base64"})
    with pytest.raises(InvalidRequest) as caught:
        as_base64({"encoding_format": "binary"})
    assert caught.value.param == "encoding_format"


def test_inputs_longer_than_the_context_are_a_400() -> None:
    check_lengths([[1] * 16, [2] * 8], 16)
    with pytest.raises(InvalidRequest) as caught:
        check_lengths([[1] * 8, [2] * 17], 16)
    assert (caught.value.param, caught.value.code) == ("input", "context_length_exceeded")
    assert "input 1 has 17 tokens" in caught.value.message
