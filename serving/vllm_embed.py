"""Embeddings on an in-process vLLM pooling model: request checks, the encode calls, the OpenAI list.

The engine runs with ``task: embed`` (vLLM's pooling runner). Each input is
its own engine request, all in flight together; usage counts the exact prompt
tokens handed to the engine.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from typing import TYPE_CHECKING

import msgspec

from core.errors import InvalidRequest
from serving.base import Completion, JsonObject, make_usage

if TYPE_CHECKING:
    from vllm.config import ModelConfig
    from vllm.inputs import TokensInput
    from vllm.outputs import PoolingRequestOutput
    from vllm.pooling_params import PoolingParams
    from vllm.v1.engine.async_llm import AsyncLLM

# OpenAI's own limit on inputs per embeddings request.
MAX_INPUTS = 2048
_INPUT_FORMS = "a non-empty string, an array of them, an array of token ids or an array of token id arrays"
_encode = msgspec.json.Encoder().encode


def embedding_inputs(body: JsonObject) -> list[str | list[int]]:
    """One entry per input: text to tokenize, or token ids as given."""
    value = body.get("input")
    if isinstance(value, str) and value:
        return [value]
    if isinstance(value, list) and 0 < len(value) <= MAX_INPUTS:
        if all(isinstance(item, str) and item for item in value):
            return list(value)
        if all(_is_token(item) for item in value):
            return [list(value)]
        if all(isinstance(item, list) and item and all(_is_token(t) for t in item) for item in value):
            return [list(item) for item in value]
    raise InvalidRequest(f"'input' must be {_INPUT_FORMS}, at most {MAX_INPUTS} of them", param="input")


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def pooling_params(body: JsonObject, model_config: ModelConfig) -> PoolingParams:
    """``dimensions`` --> vLLM's pooling parameters; only Matryoshka-trained models can shorten their vectors."""
    from vllm.exceptions import VLLMValidationError
    from vllm.pooling_params import PoolingParams

    dimensions = body.get("dimensions")
    if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1):
        raise InvalidRequest("'dimensions' must be a positive integer", param="dimensions")
    params = PoolingParams(task="embed", dimensions=dimensions)
    try:
        params.verify(model_config)
    except (VLLMValidationError, ValueError) as exc:
        raise InvalidRequest(str(exc.args[0] if exc.args else exc), param="dimensions") from None
    return params


def as_base64(body: JsonObject) -> bool:
    encoding = body.get("encoding_format")
    if encoding not in (None, "float", "base64"):
        raise InvalidRequest("'encoding_format' must be float or base64", param="encoding_format")
    return encoding == "base64"


def check_lengths(token_lists: list[list[int]], max_model_len: int) -> None:
    for index, ids in enumerate(token_lists):
        if len(ids) > max_model_len:
            raise InvalidRequest(
                f"input {index} has {len(ids)} tokens; this model takes at most {max_model_len}",
                param="input",
                code="context_length_exceeded",
            )


async def pool_all(
    engine: AsyncLLM, prompts: list[TokensInput], params: PoolingParams, ids: list[str]
) -> list[PoolingRequestOutput]:
    """Every prompt's final pooling output, in order; the caller aborts what is left if this fails."""

    async def one(index: int) -> PoolingRequestOutput:
        final: PoolingRequestOutput | None = None
        async for output in engine.encode(prompts[index], params, ids[index]):
            final = output
        assert final is not None
        return final

    return list(await asyncio.gather(*(one(index) for index in range(len(prompts)))))


def embedding_completion(model: str, outputs: list[PoolingRequestOutput], encode_base64: bool) -> Completion:
    """Pooled vectors --> the OpenAI embeddings list, with exact prompt-token usage."""
    data: list[JsonObject] = []
    for index, output in enumerate(outputs):
        vector: list[float] = output.outputs.data.float().tolist()
        # What OpenAI sends for encoding_format=base64: little-endian float32s.
        embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if encode_base64 else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt_tokens = sum(len(output.prompt_token_ids) for output in outputs)
    usage = make_usage(prompt_tokens, 0)
    body = {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
    return Completion(body=_encode(body), usage=usage)
