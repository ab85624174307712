"""A fake Triton Inference Server: KServe v2 gRPC plus Triton's ``ModelStreamInfer``.

Built on tritonclient's own protobuf definitions, served by ``grpc.aio`` on a
random port. Behaviour is chosen by the request's model name:

- ``llm``: a vLLM-backend-like model that echoes its prompt back, one
  whitespace-separated word per "token" (``reply_words``), stopping after
  ``max_tokens``. Streamed (``stream`` true) it sends one response per word with
  ``triton_final_response`` set on the last; otherwise one response. It honours
  ``exclude_input_in_output`` (the prompt is prepended when it is false) and the
  ``return_num_input_tokens`` / ``return_num_output_tokens`` /
  ``return_finish_reason`` flags. A request with ``max_tokens`` as a tensor is
  read the TensorRT-LLM way (batched [1, 1] tensors).
- ``llm-slow``: ``tick`` words at one per 20 ms (streamed, or all at once at
  the end), recording in ``cancelled`` the request ids whose call the client
  cancelled.
- ``llm-hang``: never answers (for deadlines and read timeouts).
- ``llm-unavailable`` / ``llm-invalid`` / ``llm-exhausted``: abort the call with
  UNAVAILABLE / INVALID_ARGUMENT / RESOURCE_EXHAUSTED.
- ``llm-inband``: a stream response carrying Triton's bad-input error message.
- ``llm-tools``: like ``llm``, but when the prompt has a ``<tools>`` section it
  calls the first tool the Hermes way (``<tool_call>`` JSON with arguments
  its schema accepts), and after a ``<tool_response>`` it answers
  ``TOOL_ANSWER`` plus that response; text comes in ``PIECE_CHARS`` pieces.
- ``llm-unguided``: like ``llm`` without constrained decoding: a request with
  a guide gets TensorRT-LLM's "GuidedDecoder is not setup" for its tensors,
  and for the vLLM forms the vLLM backend's error for a schema xgrammar
  cannot compile.
- any other LLM model under a JSON constraint (vLLM's ``structured_outputs`` /
  ``guided_decoding``, TensorRT-LLM's guide tensors) answers JSON the schema
  accepts (``bench.fake_json.sample_json``), or ``ANY_JSON`` for json_object,
  in ``PIECE_CHARS`` pieces, one "token" each.
- ``embedder``: KServe v2 embeddings, BYTES ``text`` [n] in, FP32
  ``embedding`` [n, 4] out (``embedding_for``), via ``raw_output_contents``.
- any other name: NOT_FOUND on unary calls, Triton's in-band "unknown model"
  message on streams.

Every inference request is recorded in ``requests``. LLM requests are held to
the shapes the real backends accept (``tests.fakes.triton_checks``); what the
fake refused is recorded in ``rejections``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import (
    deserialize_bytes_tensor,
    serialize_byte_tensor,
    triton_to_np_dtype,
)

from bench.fake_json import sample_json
from tests.fakes.triton_checks import Guide, WireError, check_llm

LLM_MODELS = ("llm", "llm-slow", "llm-hang", "llm-inband", "llm-tools", "llm-unguided")
_UNGUIDED = {
    "trtllm": "[TensorRT-LLM][ERROR] Assertion failed: Request is specified with GuidedDecodingParams, but GuidedDecoder is not setup.",
    "vllm": "Error generating stream: The provided JSON schema contains features not supported by xgrammar.",
}
PIECE_CHARS = 6
ANY_JSON = '{"answer": "fake"}'
TOOL_ANSWER = "The tool said: "
EMBEDDER = "embedder"
EMBEDDING_DIM = 4
SLOW_DELAY_S = 0.02
_ABORTS = {
    "llm-unavailable": grpc.StatusCode.UNAVAILABLE,
    "llm-invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "llm-exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
}
Tensor = tuple[str, str, np.ndarray]


def reply_words(prompt: str, max_tokens: int) -> list[str]:
    """The reply's pieces: the prompt's words, the first bare, the rest space-led."""
    words = prompt.split()[:max_tokens]
    return [word if index == 0 else " " + word for index, word in enumerate(words)]


def text_pieces(text: str, max_tokens: int) -> list[str]:
    """``text`` in ``PIECE_CHARS``-character pieces, one "token" each, at most ``max_tokens``."""
    return [text[start : start + PIECE_CHARS] for start in range(0, len(text), PIECE_CHARS)][:max_tokens]


def prompt_tools(prompt: str) -> list[dict[str, Any]]:
    """The tools a prompt shows: one JSON object per line between ``<tools>`` and ``</tools>``."""
    start, end = prompt.find("<tools>\n"), prompt.find("\n</tools>")
    if start == -1 or end == -1:
        return []
    return [json.loads(line) for line in prompt[start + len("<tools>\n") : end].splitlines()]


def tool_reply(prompt: str, tools: list[dict[str, Any]]) -> str:
    """A Hermes call to the first tool, or, after a tool result, an answer quoting it."""
    last_turn = prompt.rsplit("<|im_start|>", 2)[-2] if "<|im_start|>" in prompt else prompt
    if "<tool_response>" in last_turn:
        result = last_turn.rsplit("<tool_response>\n", 1)[1].split("\n</tool_response>", 1)[0]
        return TOOL_ANSWER + result
    function = tools[0]["function"]
    arguments = sample_json(function.get("parameters") or {"type": "object"})
    return "<tool_call>\n" + json.dumps({"name": function["name"], "arguments": arguments}) + "\n</tool_call>"


def embedding_for(text: str) -> list[float]:
    return [float(len(text)), float(len(text.split())), float(sum(text.encode()) % 251), 1.0]


@dataclass
class RecordedInfer:
    rpc: str  # "stream" or "unary"
    model: str
    request_id: str
    # name --> (datatype, shape, values)
    inputs: dict[str, tuple[str, list[int], list[Any]]]
    outputs: list[str]

    def value(self, name: str) -> Any:
        return self.inputs[name][2][0]


def _decode_inputs(request: service_pb2.ModelInferRequest) -> dict[str, tuple[str, list[int], np.ndarray]]:
    decoded = {}
    for index, tensor in enumerate(request.inputs):
        raw = request.raw_input_contents[index]
        if tensor.datatype == "BYTES":
            array = deserialize_bytes_tensor(raw)
        else:
            array = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype))
        decoded[tensor.name] = (tensor.datatype, list(tensor.shape), array.reshape(list(tensor.shape)))
    return decoded


def _response(request: service_pb2.ModelInferRequest, tensors: list[Tensor], final: bool | None) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)
    for name, datatype, array in tensors:
        output = response.outputs.add()
        output.name = name
        output.datatype = datatype
        output.shape.extend(array.shape)
        raw = serialize_byte_tensor(array).item() if datatype == "BYTES" else array.tobytes()
        response.raw_output_contents.append(raw)
    if final is not None:
        response.parameters["triton_final_response"].bool_param = final
    return response


@dataclass
class _Generation:
    """What one LLM request asks for, read from its tensors."""

    prompt: str
    max_tokens: int
    stream: bool
    prepend_prompt: bool
    flags: set[str]
    batched: bool
    guide: Guide | None = None

    @classmethod
    def read(cls, inputs: dict[str, tuple[str, list[int], np.ndarray]], guide: Guide | None = None) -> _Generation:
        def first(name: str, default: Any) -> Any:
            return inputs[name][2].reshape(-1)[0] if name in inputs else default

        prompt = first("text_input", b"").decode()
        batched = "max_tokens" in inputs
        if batched:
            max_tokens = int(first("max_tokens", 16))
        else:
            max_tokens = int(json.loads(first("sampling_parameters", b"{}")).get("max_tokens", 16))
        stream = bool(first("stream", False))
        flags = {name for name in ("return_num_input_tokens", "return_num_output_tokens", "return_finish_reason") if first(name, False)}
        prepend = not bool(first("exclude_input_in_output", False))
        return cls(prompt, max_tokens, stream, prepend and not stream, flags, batched, guide)

    def pieces(self, model: str) -> list[str]:
        """The reply, one piece per "token"."""
        if self.guide is not None:
            text = ANY_JSON if self.guide.schema is None else json.dumps(sample_json(self.guide.schema))
            return text_pieces(text, self.max_tokens)
        tools = prompt_tools(self.prompt) if model == "llm-tools" else []
        if tools:
            return text_pieces(tool_reply(self.prompt, tools), self.max_tokens)
        return reply_words(self.prompt, self.max_tokens)

    def tensors(self, text: str, output_tokens: int, finish: str | None) -> list[Tensor]:
        shape = (1, 1) if self.batched else (1,)
        tensors: list[Tensor] = [("text_output", "BYTES", np.array([text.encode()], dtype=np.object_).reshape(shape))]
        if "return_num_input_tokens" in self.flags:
            tensors.append(("num_input_tokens", "UINT32", np.array([len(self.prompt.split())], dtype=np.uint32)))
        if "return_num_output_tokens" in self.flags:
            tensors.append(("num_output_tokens", "UINT32", np.array([output_tokens], dtype=np.uint32)))
        if "return_finish_reason" in self.flags:
            tensors.append(("finish_reason", "BYTES", np.array([str(finish).encode()], dtype=np.object_)))
        return tensors

    def finish(self, words: list[str]) -> str:
        return "length" if len(words) >= self.max_tokens else "stop"


class _Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, fake: FakeTriton) -> None:
        self._fake = fake

    async def ServerLive(self, request: Any, context: Any) -> service_pb2.ServerLiveResponse:
        self._fake.health_checks += 1
        return service_pb2.ServerLiveResponse(live=self._fake.live)

    async def ServerReady(self, request: Any, context: Any) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self._fake.live)

    async def ModelReady(self, request: Any, context: Any) -> service_pb2.ModelReadyResponse:
        known = request.name in (*LLM_MODELS, EMBEDDER)
        return service_pb2.ModelReadyResponse(ready=known and request.name not in self._fake.unready)

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> service_pb2.ModelMetadataResponse:
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        if request.name == EMBEDDER:
            inputs = [tensor(name="text", datatype="BYTES", shape=[-1])]
            outputs = [tensor(name="embedding", datatype="FP32", shape=[-1, EMBEDDING_DIM])]
        elif request.name in LLM_MODELS:
            inputs = [tensor(name="text_input", datatype="BYTES", shape=[1])]
            outputs = [tensor(name="text_output", datatype="BYTES", shape=[-1])]
        else:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}' is not found")
        return service_pb2.ModelMetadataResponse(name=request.name, versions=["1"], platform="python", inputs=inputs, outputs=outputs)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> service_pb2.ModelInferResponse:
        inputs = self._fake.record("unary", request)
        if request.model_name in _ABORTS:
            await context.abort(_ABORTS[request.model_name], "fake failure")
        if request.model_name == EMBEDDER:
            return await self._embed(request, inputs, context)
        if request.model_name not in LLM_MODELS:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.model_name}' is not found")
        try:
            return await self._generate_unary(request, inputs, context)
        except asyncio.CancelledError:
            self._fake.cancelled.append(request.id)
            raise

    async def _generate_unary(
        self, request: Any, inputs: dict[str, Any], context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        if request.model_name == "llm-hang":
            await asyncio.sleep(3600)
        try:
            guide = check_llm(request.model_name, request.id, inputs)
        except WireError as error:
            self._fake.rejections.append(error.message)
            await context.abort(error.status, error.message)
        generation = _Generation.read(inputs, guide)
        words = generation.pieces(request.model_name)
        if request.model_name == "llm-slow":
            await asyncio.sleep(SLOW_DELAY_S * generation.max_tokens)
        text = (generation.prompt if generation.prepend_prompt else "") + "".join(words)
        return _response(request, generation.tensors(text, len(words), generation.finish(words)), final=None)

    async def _embed(self, request: Any, inputs: dict[str, Any], context: grpc.aio.ServicerContext) -> service_pb2.ModelInferResponse:
        if set(inputs) != {"text"} or any(output.name != "embedding" for output in request.outputs):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unexpected inference input or output for model 'embedder'")
        texts = [item.decode() for item in inputs["text"][2].reshape(-1)]
        vectors = np.array([embedding_for(text) for text in texts], dtype=np.float32)
        return _response(request, [("embedding", "FP32", vectors)], final=None)

    async def ModelStreamInfer(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        request_id = ""
        try:
            async for request in request_iterator:
                request_id = request.id
                inputs = self._fake.record("stream", request)
                if request.model_name in _ABORTS:
                    await context.abort(_ABORTS[request.model_name], "fake failure")
                async for response in self._stream_one(request, inputs):
                    yield response
        except asyncio.CancelledError:
            self._fake.cancelled.append(request_id)
            raise

    async def _stream_one(self, request: Any, inputs: dict[str, Any]) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        model = request.model_name
        if model == "llm-inband":
            message = f"[request id: {request.id}] unexpected inference input 'foo' for model '{model}'"
            yield service_pb2.ModelStreamInferResponse(error_message=message)
            return
        if model not in LLM_MODELS:
            yield service_pb2.ModelStreamInferResponse(error_message=f"Request for unknown model: '{model}' is not found")
            return
        if model == "llm-hang":
            await asyncio.sleep(3600)
        try:
            guide = check_llm(model, request.id, inputs)
        except WireError as error:
            self._fake.rejections.append(error.message)
            yield service_pb2.ModelStreamInferResponse(error_message=error.message)
            return
        if model == "llm-unguided" and guide is not None:
            yield service_pb2.ModelStreamInferResponse(error_message=_UNGUIDED["trtllm" if guide.source == "trtllm" else "vllm"])
            return
        generation = _Generation.read(inputs, guide)
        if model == "llm-slow":
            words = ["tick" if index == 0 else " tick" for index in range(generation.max_tokens)]
        else:
            words = generation.pieces(model)
        if not generation.stream:
            if model == "llm-slow":
                await asyncio.sleep(SLOW_DELAY_S * len(words))
            text = (generation.prompt if generation.prepend_prompt else "") + "".join(words)
            tensors = generation.tensors(text, len(words), generation.finish(words))
            yield service_pb2.ModelStreamInferResponse(infer_response=_response(request, tensors, final=True))
            return
        for index, word in enumerate(words or [""]):
            last = index >= len(words) - 1
            if model == "llm-slow":
                await asyncio.sleep(SLOW_DELAY_S)
            finish = generation.finish(words) if last else None
            tensors = generation.tensors(word, 1 if word else 0, finish)
            yield service_pb2.ModelStreamInferResponse(infer_response=_response(request, tensors, final=last))
            self._fake.sent += 1


@dataclass
class FakeTriton:
    live: bool = True
    unready: set[str] = field(default_factory=set)
    requests: list[RecordedInfer] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    health_checks: int = 0
    sent: int = 0
    port: int = 0
    _server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def record(self, rpc: str, request: Any) -> dict[str, tuple[str, list[int], np.ndarray]]:
        inputs = _decode_inputs(request)
        recorded = {name: (datatype, shape, array.reshape(-1).tolist()) for name, (datatype, shape, array) in inputs.items()}
        outputs = [output.name for output in request.outputs]
        self.requests.append(RecordedInfer(rpc, request.model_name, request.id, recorded, outputs))
        return inputs

    async def start(self) -> None:
        self._server = grpc.aio.server()
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
