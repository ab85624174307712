"""Tensors to and from Triton over gRPC (``tritonclient.grpc.aio``).

Imported only when a ``TritonEngine`` starts, so a gateway without Triton
deployments never loads tritonclient, grpc or numpy.

LLM inputs follow the two common Triton LLM backends:

- ``vllm``: ``text_input`` (BYTES [1]), ``stream`` (BOOL [1]),
  ``sampling_parameters`` (BYTES [1], a JSON object), ``exclude_input_in_output``
  (BOOL [1]) and, when counts are wanted, ``return_num_input_tokens``,
  ``return_num_output_tokens`` and ``return_finish_reason`` (BOOL [1]).
- ``tensorrt_llm`` (the ``ensemble`` / ``tensorrt_llm_bls`` models): the same
  names with a leading batch dimension of 1, and one tensor per sampling knob
  (``max_tokens`` INT32, ``temperature`` FP32, ``random_seed`` UINT64,
  ``stop_words`` BYTES, ...).

A JSON constraint (``serving.triton_guides``) travels in ``sampling_parameters``
for the vLLM backend and as the ``guided_decoding_guide_type`` /
``guided_decoding_guide`` tensors (BYTES [1, 1]) for TensorRT-LLM.

Streamed ``text_output`` values are deltas; ``num_output_tokens`` is per
response, so callers sum it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from core.errors import GatewayError, UpstreamError
from serving.triton_errors import in_band_error, status_error
from serving.triton_prompt import LLMRequest, SamplingSettings

_FINAL_PARAM = "triton_final_response"
_UINT64 = 1 << 64


@dataclass(slots=True)
class LLMPiece:
    """One Triton response of a generation, decoded."""

    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    final: bool = False


def to_gateway_error(exc: BaseException) -> GatewayError:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return status_error(exc.code().name)
    if isinstance(exc, InferenceServerException):
        status = exc.status()
        if status:
            return status_error(status.rsplit(".", 1)[-1])
        return in_band_error(exc.message() or "")
    return UpstreamError("Triton request failed")


def _tensor(name: str, value: np.ndarray[Any, Any], datatype: str) -> InferInput:
    tensor = InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def _text(name: str, values: list[str], batched: bool) -> InferInput:
    array = np.array([value.encode("utf-8") for value in values], dtype=np.object_)
    return _tensor(name, array.reshape(1, -1) if batched else array, "BYTES")


def _scalar(name: str, value: bool | float, dtype: type[np.generic], datatype: str, batched: bool) -> InferInput:
    array = np.array([[value]] if batched else [value], dtype=dtype)
    return _tensor(name, array, datatype)


def llm_inputs(request: LLMRequest) -> list[InferInput]:
    guide = request.guide
    if request.backend == "tensorrt_llm":
        inputs = _trtllm_inputs(request.prompt, request.settings, request.stream)
        for name, value in (guide.trtllm_inputs() if guide is not None else {}).items():
            inputs.append(_text(name, [value], batched=True))
        return inputs
    sampling = request.settings.vllm_json(guide.sampling_entries() if guide is not None else None)
    inputs = [
        _text("text_input", [request.prompt], batched=False),
        _scalar("stream", request.stream, np.bool_, "BOOL", batched=False),
        _tensor("sampling_parameters", np.array([sampling], dtype=np.object_), "BYTES"),
        # Without this the vLLM backend prepends the prompt to non-streamed output.
        _scalar("exclude_input_in_output", True, np.bool_, "BOOL", batched=False),
    ]
    if request.counts:
        for name in ("return_num_input_tokens", "return_num_output_tokens", "return_finish_reason"):
            inputs.append(_scalar(name, True, np.bool_, "BOOL", batched=False))
    return inputs


def _trtllm_inputs(prompt: str, settings: SamplingSettings, stream: bool) -> list[InferInput]:
    inputs = [
        _text("text_input", [prompt], batched=True),
        _scalar("max_tokens", settings.max_tokens, np.int32, "INT32", batched=True),
        _scalar("stream", stream, np.bool_, "BOOL", batched=True),
        _scalar("exclude_input_in_output", True, np.bool_, "BOOL", batched=True),
    ]
    floats = {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "presence_penalty": settings.presence_penalty,
        "frequency_penalty": settings.frequency_penalty,
    }
    for name, value in floats.items():
        if value is not None:
            inputs.append(_scalar(name, value, np.float32, "FP32", batched=True))
    if settings.top_k is not None:
        inputs.append(_scalar("top_k", settings.top_k, np.int32, "INT32", batched=True))
    if settings.seed is not None:
        # OpenAI seeds are signed; the backend takes an unsigned 64-bit seed.
        inputs.append(_scalar("random_seed", settings.seed % _UINT64, np.uint64, "UINT64", batched=True))
    if settings.stop:
        inputs.append(_text("stop_words", settings.stop, batched=True))
    return inputs


def _strings(result: InferResult, name: str) -> list[str]:
    array = result.as_numpy(name)
    if array is None:
        return []
    return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]


def _count(result: InferResult, name: str) -> int | None:
    array = result.as_numpy(name)
    if array is None or array.size == 0:
        return None
    return int(array.reshape(-1).sum())


def parse_llm(result: InferResult) -> LLMPiece:
    reasons = [reason for reason in _strings(result, "finish_reason") if reason and reason != "None"]
    parameters = result.get_response().parameters
    return LLMPiece(
        text="".join(_strings(result, "text_output")),
        input_tokens=_count(result, "num_input_tokens"),
        output_tokens=_count(result, "num_output_tokens"),
        finish_reason=reasons[0] if reasons else None,
        final=_FINAL_PARAM in parameters and parameters[_FINAL_PARAM].bool_param,
    )


class LLMStream:
    """The responses of one ``ModelStreamInfer`` call, decoded; ``cancel`` ends it."""

    def __init__(self, responses: Any) -> None:
        self._responses = responses

    def __aiter__(self) -> LLMStream:
        return self

    async def __anext__(self) -> LLMPiece:
        try:
            result, error = await self._responses.__anext__()
        except (grpc.RpcError, InferenceServerException) as exc:
            raise to_gateway_error(exc) from None
        if error is not None:
            raise to_gateway_error(error)
        return parse_llm(result)

    def cancel(self) -> None:
        self._responses.cancel()


async def _one_request(request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    # Ending the request side after one request half-closes the stream; Triton
    # still sends every response of that request before it ends the call.
    yield request


class TritonIO:
    """One gRPC channel to a Triton server; every call goes through it."""

    def __init__(self, target: str) -> None:
        self._client = InferenceServerClient(target)

    async def close(self) -> None:
        await self._client.close()

    async def ready(self, model: str, version: str, timeout: float) -> bool:
        try:
            live = await self._client.is_server_live(client_timeout=timeout)
            return bool(live) and bool(await self._client.is_model_ready(model, version, client_timeout=timeout))
        except (grpc.RpcError, InferenceServerException):
            return False

    def open_stream(self, request: LLMRequest, timeout: float) -> LLMStream:
        call = {
            "model_name": request.model,
            "model_version": request.version,
            "inputs": llm_inputs(request),
            "request_id": request.request_id,
        }
        try:
            responses = self._client.stream_infer(_one_request(call), stream_timeout=timeout, headers=request.metadata)
        except (grpc.RpcError, InferenceServerException) as exc:
            raise to_gateway_error(exc) from None
        return LLMStream(responses)

    async def infer_llm(self, request: LLMRequest, timeout: float) -> LLMPiece:
        try:
            result = await self._client.infer(
                request.model,
                llm_inputs(request),
                model_version=request.version,
                request_id=request.request_id,
                client_timeout=timeout,
                headers=request.metadata,
            )
        except (grpc.RpcError, InferenceServerException) as exc:
            raise to_gateway_error(exc) from None
        piece = parse_llm(result)
        piece.final = True
        return piece

    async def embed(
        self, model: str, version: str, request_id: str, names: tuple[str, str], texts: list[str], timeout: float,
        metadata: dict[str, str] | None = None,
    ) -> list[list[float]]:  # fmt: skip
        """KServe v2 embeddings: BYTES [n] in, FP32 [n, d] out."""
        input_name, output_name = names
        try:
            result = await self._client.infer(
                model,
                [_text(input_name, texts, batched=False)],
                model_version=version,
                outputs=[InferRequestedOutput(output_name)],
                request_id=request_id,
                client_timeout=timeout,
                headers=metadata,
            )
        except (grpc.RpcError, InferenceServerException) as exc:
            raise to_gateway_error(exc) from None
        array = result.as_numpy(output_name)
        if array is None or array.ndim != 2 or array.shape[0] != len(texts):
            raise UpstreamError("Triton embedding output has an unexpected shape")
        vectors: list[list[float]] = array.astype(np.float32).tolist()
        return vectors
