"""Triton Inference Server behind the Engine interface, over gRPC.

``spec.base_url`` is the gRPC endpoint as ``host:port`` (a ``grpc://`` prefix is
accepted) and ``spec.model`` the Triton model name. Generation goes through
``ModelStreamInfer``, the only RPC decoupled models (the vLLM backend,
TensorRT-LLM) answer on; ``generate_rpc="unary"`` uses ``ModelInfer`` instead,
for LLM models deployed without the decoupled policy. Embeddings call a
separate KServe v2 model (``embedding_model``) with ``ModelInfer``.

Chat messages become one prompt through ``chat_template`` (see
``serving.triton_prompt``); token counts and the "estimated" flag are
described in ``serving.triton_openai``. Tools are written into the prompt and
their calls read back from the text (``serving.triton_tools``);
``response_format`` and forced calls decode under the constraint form that
``structured_outputs`` names (``serving.triton_guides``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from typing import TYPE_CHECKING, Literal, TypeVar

import msgspec

from core.errors import InvalidRequest, UpstreamConnectError, UpstreamTimeout
from serving.base import Completion, EngineRequest, EngineSpec, Load, StreamChunk, Usage
from serving.tool_call_text import ToolOutput, tool_finish_reason
from serving.triton_calls import InFlight, Tally, cancelled_by_abort
from serving.triton_errors import aborted_error
from serving.triton_guides import StructuredVia
from serving.triton_openai import (
    USAGE_ESTIMATED_HEADER,
    ResponseMeta,
    completion_body,
    delta_chunk,
    embeddings_body,
    estimate_tokens,
    message_chunk,
    role_chunk,
    usage_chunk,
)
from serving.triton_prompt import (
    Backend,
    ChatTemplate,
    LLMRequest,
    render_prompt,
    sampling_settings,
)
from serving.triton_tools import ToolParser, output_plan

if TYPE_CHECKING:
    from serving.triton_io import LLMPiece, LLMStream, TritonIO

T = TypeVar("T")


class TritonOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``options`` of a ``provider: triton`` deployment.

    ``count_tokens_with="server"`` asks the vLLM backend for
    ``num_input_tokens`` / ``num_output_tokens`` / ``finish_reason`` (r24.12 and
    later) and estimates whatever does not come back; ``"estimate"`` never asks,
    for older backends that reject unknown inputs. ``default_max_tokens`` applies
    when a request sets no limit, since the backends otherwise stop after a
    handful of tokens (vLLM) or require one (TensorRT-LLM).

    ``structured_outputs`` is how the served model takes a JSON constraint
    (``vllm_backend``, ``vllm_backend_legacy`` for vLLM backends before vLLM
    0.11, ``trtllm``) or ``none``, where ``response_format`` json_object /
    json_schema and forced tool calls are refused. ``tool_parser`` reads
    ``<tool_call>`` regions (Hermes) out of the text when ``tool_choice`` is
    auto; None refuses tools.
    """

    backend: Backend = "vllm"
    embedding_model: str | None = None
    embedding_input: str = "text"
    embedding_output: str = "embedding"
    model_version: str = ""
    chat_template: ChatTemplate = "chatml"
    count_tokens_with: Literal["server", "estimate"] = "server"
    default_max_tokens: int = 1024
    generate_rpc: Literal["stream", "unary"] = "stream"
    health_cache_s: float = 5.0
    structured_outputs: StructuredVia = "none"
    tool_parser: ToolParser | None = "hermes"

    def __post_init__(self) -> None:
        if self.structured_outputs == "trtllm" and self.backend != "tensorrt_llm":
            raise ValueError("structured_outputs trtllm needs backend tensorrt_llm")
        if self.structured_outputs.startswith("vllm_backend") and self.backend != "vllm":
            raise ValueError(f"structured_outputs {self.structured_outputs} needs backend vllm")


def _grpc_target(base_url: str) -> str:
    target = base_url.removeprefix("grpc://").rstrip("/")
    if not target:
        raise ValueError("a triton deployment needs base_url as host:port")
    return target


class TritonEngine:
    provider = "triton"

    def __init__(self, spec: EngineSpec) -> None:
        options = spec.options if spec.options is not None else TritonOptions()
        if not isinstance(options, TritonOptions):
            raise TypeError("a triton deployment needs TritonOptions")
        self.name = spec.name
        self._spec = spec
        self._options = options
        self._target = _grpc_target(spec.base_url)
        self._io: TritonIO | None = None
        self._inflight = InFlight()
        self._healthy = False
        self._checked_at = float("-inf")
        self._health_lock = asyncio.Lock()

    async def start(self) -> None:
        if self._io is None:
            from serving.triton_io import TritonIO

            self._io = TritonIO(self._target)

    async def close(self) -> None:
        io, self._io = self._io, None
        if io is not None:
            await io.close()

    def _require_io(self) -> TritonIO:
        if self._io is None:
            raise UpstreamConnectError("Triton engine is not started")
        return self._io

    def _prepare(self, request: EngineRequest, stream: bool) -> tuple[LLMRequest, ResponseMeta, ToolOutput | None]:
        """The Triton request, what the response shares, and how to read tool calls (None: all content)."""
        if request.kind == "embedding":
            raise InvalidRequest("embeddings requests go to embed()")
        body = request.body
        options = self._options
        plan = output_plan(request.kind, body, options.structured_outputs, options.tool_parser)
        llm = LLMRequest(
            model=self._spec.model,
            version=options.model_version,
            request_id=request.request_id,
            backend=options.backend,
            prompt=render_prompt(request.kind, body, options.chat_template, plan.tools),
            settings=sampling_settings(body, options.default_max_tokens),
            stream=stream,
            counts=options.count_tokens_with == "server",
            guide=plan.guide,
            metadata=trace_metadata(request),
        )
        model = body.get("model")
        name = model if isinstance(model, str) else self._spec.model
        return llm, ResponseMeta(request.kind, request.request_id, name, int(time.time())), plan.reader

    async def _pieces(self, request_id: str, stream: LLMStream) -> AsyncGenerator[LLMPiece, None]:
        """The stream's responses, with a per-response read timeout.

        A call left before its final response (consumer gone, error, abort) is
        cancelled, which tells Triton to stop generating.
        """
        call = self._inflight.open(request_id, stream.cancel)
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self._spec.timeouts.read_s):
                        piece = await anext(stream)
                except StopAsyncIteration:
                    finished = True
                    return
                except TimeoutError:
                    raise UpstreamTimeout("Triton sent nothing within the read timeout") from None
                except asyncio.CancelledError:
                    if cancelled_by_abort(call):
                        raise aborted_error() from None
                    raise
                finished = piece.final
                yield piece
                if finished:
                    return
        finally:
            if not finished:
                stream.cancel()
            self._inflight.close(request_id, call)

    async def _unary(self, request_id: str, work: Awaitable[T]) -> T:
        task = asyncio.ensure_future(work)
        call = self._inflight.open(request_id, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            if cancelled_by_abort(call):
                raise aborted_error() from None
            raise
        finally:
            self._inflight.close(request_id, call)

    async def generate(self, request: EngineRequest) -> Completion:
        llm, meta, reader = self._prepare(request, stream=False)
        io = self._require_io()
        tally = Tally()
        if self._options.generate_rpc == "unary":
            timeout = min(self._spec.timeouts.read_s, self._spec.timeouts.total_s)
            tally.add(await self._unary(request.request_id, io.infer_llm(llm, timeout)))
        else:
            stream = io.open_stream(llm, self._spec.timeouts.total_s)
            async with aclosing(self._pieces(request.request_id, stream)) as pieces:
                async for piece in pieces:
                    tally.add(piece)
        usage, estimated = tally.usage(llm.prompt)
        finish = tally.finish_reason(llm.settings.max_tokens, usage.completion_tokens)
        message = None
        if reader is not None:
            message, called = reader.message(tally.text)
            finish = tool_finish_reason(finish, called)
        body = completion_body(meta, tally.text, finish, usage, estimated, message)
        return Completion(body=body, usage=usage, headers={USAGE_ESTIMATED_HEADER: "true"} if estimated else {})

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamChunk]:
        llm, meta, reader = self._prepare(request, stream=True)
        stream = self._require_io().open_stream(llm, self._spec.timeouts.total_s)
        tally = Tally()
        tools = reader.stream() if reader is not None else None
        started = False
        async with aclosing(self._pieces(request.request_id, stream)) as pieces:
            async for piece in pieces:
                # The role chunk waits for Triton's first response, so a failed
                # call can still be retried elsewhere before any byte is sent.
                if not started and meta.kind == "chat":
                    yield StreamChunk(data=role_chunk(meta))
                started = True
                tally.add(piece)
                if tools is not None:
                    # Content and tool-call pieces, as far as the reader can tell yet.
                    delta = tools.feed(piece.text, ()) if piece.text else None
                    if delta is not None:
                        yield StreamChunk(data=message_chunk(meta, delta), text=delta.get("content") or "")
                elif piece.text:
                    yield StreamChunk(data=delta_chunk(meta, piece.text), text=piece.text)
        if not started and meta.kind == "chat":
            yield StreamChunk(data=role_chunk(meta))
        usage, estimated = tally.usage(llm.prompt)
        finish = tally.finish_reason(llm.settings.max_tokens, usage.completion_tokens)
        if tools is not None:
            rest = tools.finish()
            if rest is not None:
                yield StreamChunk(data=message_chunk(meta, rest), text=rest.get("content") or "")
            finish = tool_finish_reason(finish, tools.called)
        yield StreamChunk(data=delta_chunk(meta, "", finish), finish_reason=finish)
        yield StreamChunk(data=usage_chunk(meta, usage, estimated), usage=usage, usage_only=True)

    async def embed(self, request: EngineRequest) -> Completion:
        model = self._options.embedding_model
        if model is None:
            raise InvalidRequest("this deployment does not serve embeddings", param="model")
        texts = _embedding_texts(request.body.get("input"))
        encoding = request.body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise InvalidRequest("encoding_format must be 'float' or 'base64'", param="encoding_format")
        io = self._require_io()
        names = (self._options.embedding_input, self._options.embedding_output)
        timeout = min(self._spec.timeouts.read_s, self._spec.timeouts.total_s)
        work = io.embed(model, self._options.model_version, request.request_id, names, texts, timeout, trace_metadata(request))
        vectors = await self._unary(request.request_id, work)
        tokens = sum(estimate_tokens(text) for text in texts)
        name = request.body.get("model")
        body = embeddings_body(name if isinstance(name, str) else model, vectors, encoding, tokens)
        usage = Usage(prompt_tokens=tokens, total_tokens=tokens)
        return Completion(body=body, usage=usage, headers={USAGE_ESTIMATED_HEADER: "true"})

    async def abort(self, request_id: str) -> None:
        self._inflight.abort(request_id)

    async def health(self) -> bool:
        """Server live and model ready, checked at most once per ``health_cache_s``."""
        if self._io is None:
            return False
        async with self._health_lock:
            if time.monotonic() - self._checked_at >= self._options.health_cache_s:
                io = self._require_io()
                timeout = self._spec.timeouts.connect_s
                self._healthy = await io.ready(self._spec.model, self._options.model_version, timeout)
                self._checked_at = time.monotonic()
        return self._healthy

    def load(self) -> Load:
        return Load(running=len(self._inflight))


def trace_metadata(request: EngineRequest) -> dict[str, str] | None:
    """The W3C trace context as gRPC metadata (Triton continues it in its OpenTelemetry trace mode), or None."""
    if request.traceparent is None:
        return None
    if request.tracestate:
        return {"traceparent": request.traceparent, "tracestate": request.tracestate}
    return {"traceparent": request.traceparent}


def _embedding_texts(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value)
    raise InvalidRequest("'input' must be a string or a non-empty array of strings", param="input")
