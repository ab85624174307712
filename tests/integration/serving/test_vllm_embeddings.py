"""Embeddings from the in-process vLLM engine: the tiny Llama run with ``task: embed`` (pooling runner)."""

from __future__ import annotations

import base64
import json
import math
import struct
import uuid
from typing import Any

import msgspec
import pytest

from core.errors import InvalidRequest
from serving.base import EngineRequest, Load
from serving.vllm_engine import VLLMEngine, VLLMOptions
from tests.integration.serving.conftest import MAX_MODEL_LEN, TINY_EMBEDDER
from tests.integration.serving.vllm_requests import wait_idle

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _embedding(tenant: str = "acme", **body: Any) -> EngineRequest:
    return EngineRequest(kind="embedding", body={"model": TINY_EMBEDDER, **body}, request_id=uuid.uuid4().hex, tenant=tenant)


async def _vectors(engine: VLLMEngine, **body: Any) -> tuple[list[Any], dict[str, Any]]:
    payload = json.loads((await engine.embed(_embedding(**body))).body)
    return [item["embedding"] for item in payload["data"]], payload


async def test_usage_counts_the_tokens_each_input_has(vllm_embedder: VLLMEngine, tiny_tokenizer: Any) -> None:
    inputs = ["The quick brown fox", "Hello, how are you today?", "a"]
    completion = await vllm_embedder.embed(_embedding(input=inputs))
    payload = json.loads(completion.body)
    expected = sum(len(tiny_tokenizer.encode(text)) for text in inputs)
    assert payload["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
    assert completion.usage is not None and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (expected, 0)
    assert payload["object"] == "list" and payload["model"] == TINY_EMBEDDER
    assert [item["index"] for item in payload["data"]] == [0, 1, 2]
    # Last-token pooling, normalized: unit vectors as wide as the model's hidden state.
    for item in payload["data"]:
        assert len(item["embedding"]) == 128
        assert math.isclose(math.fsum(x * x for x in item["embedding"]), 1.0, rel_tol=1e-4)


async def test_same_text_same_vector_whatever_the_batch(vllm_embedder: VLLMEngine, tiny_tokenizer: Any) -> None:
    alone, _ = await _vectors(vllm_embedder, input="bonjour")
    batched, _ = await _vectors(vllm_embedder, input=["hello world", "bonjour"])
    by_ids, _ = await _vectors(vllm_embedder, input=tiny_tokenizer.encode("bonjour"))
    assert alone[0] == pytest.approx(batched[1], abs=1e-5)
    assert by_ids[0] == pytest.approx(alone[0], abs=1e-5)
    assert batched[0] != pytest.approx(batched[1], abs=1e-3)


async def test_base64_encoding_carries_the_same_floats(vllm_embedder: VLLMEngine) -> None:
    floats, _ = await _vectors(vllm_embedder, input=["hello world"])
    encoded, _ = await _vectors(vllm_embedder, input=["hello world"], encoding_format="base64")
    raw = base64.b64decode(encoded[0])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(floats[0], abs=1e-6)


BAD = [
    ({"input": ""}, "input", None),
    ({"input": []}, "input", None),
    ({"input": ["ok", 3]}, "input", None),
    ({"input": "x" * 10, "encoding_format": "hex"}, "encoding_format", None),
    ({"input": "hello", "dimensions": 0}, "dimensions", None),
    # The tiny model has no Matryoshka training, so vLLM refuses to shorten its vectors.
    ({"input": "hello", "dimensions": 8}, "dimensions", None),
    ({"input": list(range(3, 4 + MAX_MODEL_LEN))}, "input", "context_length_exceeded"),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD)
async def test_bad_embedding_requests_are_a_400(vllm_embedder: VLLMEngine, body: dict[str, Any], param: str, code: str | None) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await vllm_embedder.embed(_embedding(**body))
    assert caught.value.param == param
    if code is not None:
        assert caught.value.code == code
    assert await wait_idle(vllm_embedder) == Load()
    assert await vllm_embedder.health()


async def test_embed_options_are_checked() -> None:
    options = msgspec.convert({"model_path": "/m", "task": "embed"}, VLLMOptions)
    assert options.task == "embed"
    with pytest.raises(msgspec.ValidationError, match="tool_parser"):
        msgspec.convert({"model_path": "/m", "task": "embed", "tool_parser": "hermes"}, VLLMOptions)
    with pytest.raises(msgspec.ValidationError, match="compact_json"):
        msgspec.convert({"model_path": "/m", "compact_json": True, "structured_outputs_backend": "auto"}, VLLMOptions)
