"""In-process vLLM: an ``AsyncLLM`` (vLLM v1) serving one model from a local directory.

The gateway process owns the tokenizer and the request bookkeeping; vLLM runs its
engine core (scheduler and model) in a child process it starts itself. Prompts
are tokenized here, off the event loop, so prompt token counts are exact and each
tenant's prompts carry the tenant as ``cache_salt``: one tenant's prefix-cache
hits can never reveal what another tenant sent. vLLM is imported in ``start`` so
the router runs without it installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from core.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamConnectError,
    UpstreamError,
)
from serving.base import Completion, EngineRequest, EngineSpec, JsonObject, Load, StreamChunk
from serving.structured_outputs import JsonConstraint, ToolPlan, forced_call_schema, response_constraint, tool_plan
from serving.tool_call_text import ForcedCalls, ToolOutput
from serving.vllm_embed import as_base64, check_lengths, embedding_completion, embedding_inputs, pool_all, pooling_params
from serving.vllm_options import VLLMOptions
from serving.vllm_output import ResponseMeta, StreamEncoder, final_completion
from serving.vllm_params import (
    EngineLimits,
    chat_messages,
    completion_prompts,
    sampling_kwargs,
)
from serving.vllm_runtime import (
    QueueSnapshot,
    merged,
    queue_stat_logger,
    sampling_params,
    structured_outputs,
    translate_error,
    verify_structured,
    visible_device,
)
from serving.vllm_tools import ParsedToolCalls, load_tool_parser

if TYPE_CHECKING:
    from vllm.inputs import TokensInput
    from vllm.outputs import RequestOutput
    from vllm.sampling_params import SamplingParams
    from vllm.tokenizers import TokenizerLike
    from vllm.tool_parsers import ToolParser
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = ["VLLMEngine", "VLLMOptions"]

_GIB = 1 << 30


class VLLMEngine:
    provider = "vllm"

    def __init__(self, spec: EngineSpec) -> None:
        if not isinstance(spec.options, VLLMOptions):
            raise TypeError("the vllm provider needs options with at least model_path")
        self.name = spec.name
        self.spec = spec
        self.options: VLLMOptions = spec.options
        self._engine: AsyncLLM | None = None
        self._tokenizer: TokenizerLike | None = None
        self._limits = EngineLimits(max_model_len=0, max_logprobs=0)
        self._queue = QueueSnapshot()
        self._max_running = 0
        # request id --> the vLLM request ids serving it (one per prompt).
        self._active: dict[str, list[str]] = {}
        self._tool_parser: type[ToolParser] | None = None

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._engine is not None:
            return
        # vLLM takes a name that is not a directory for a hub id and would download it.
        for path in (self.options.model_path, self.options.tokenizer):
            if path is not None and not os.path.isdir(path):
                raise FileNotFoundError(f"vllm deployment {self.name!r}: {path!r} is not a local directory")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**self._engine_kwargs())
        stat_logger = queue_stat_logger(self._queue)

        def build() -> AsyncLLM:
            with visible_device(self.options.gpu_index):
                return AsyncLLM.from_engine_args(args, stat_loggers=[stat_logger])

        # Loading weights and starting the engine core takes seconds to minutes.
        # No local name holds the engine: vLLM's first tokenizer call imports lazily
        # and the import machinery keeps this frame, which must not pin a closed engine.
        self._engine = await asyncio.to_thread(build)
        config = self._engine.model_config
        self._limits = EngineLimits(max_model_len=config.max_model_len, max_logprobs=config.max_logprobs)
        self._max_running = self._engine.vllm_config.scheduler_config.max_num_seqs
        self._tokenizer = self._engine.get_tokenizer()
        if self.options.tool_parser is not None:
            try:
                self._tool_parser = load_tool_parser(self.options.tool_parser, self._tokenizer)
            except ValueError:
                await self.close()
                raise

    def _engine_kwargs(self) -> dict[str, Any]:
        options = self.options
        kwargs: dict[str, Any] = {
            "model": options.model_path,
            "dtype": options.dtype,
            "gpu_memory_utilization": options.gpu_memory_utilization,
            "tensor_parallel_size": options.tensor_parallel_size,
            "enforce_eager": options.enforce_eager,
            # Only the queue hook passed in start() records stats; vLLM's loggers stay off.
            "disable_log_stats": True,
            # vLLM's request log would include prompts.
            "enable_log_requests": False,
        }
        if options.task == "embed":
            # A generative architecture is converted to an embedding model (vLLM's --runner pooling).
            kwargs["runner"] = "pooling"
        else:
            from vllm.config import StructuredOutputsConfig

            kwargs["structured_outputs_config"] = StructuredOutputsConfig(
                backend=options.structured_outputs_backend, disable_any_whitespace=options.compact_json
            )
        optional = {
            # vLLM names the model in its messages: the deployment's name, not a local path.
            "served_model_name": self.spec.model or None,
            "tokenizer": options.tokenizer,
            "max_model_len": options.max_model_len,
            "max_num_seqs": options.max_num_seqs,
            "seed": options.seed,
        }
        kwargs.update({key: value for key, value in optional.items() if value is not None})
        if options.kv_cache_space_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(options.kv_cache_space_gib * _GIB)
        return kwargs

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        self._tokenizer = None
        if engine is None:
            return
        # Requests still in flight end now, as aborted, instead of waiting forever
        # for outputs that will not come.
        in_flight = [vllm_id for ids in self._active.values() for vllm_id in ids]
        if in_flight:
            await engine.abort(in_flight)
        # Stop reading outputs first: otherwise the reader sees the engine core go
        # away below and reports it as an engine failure.
        handler = engine.output_handler
        if handler is not None:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        # Stops the engine core process; it may wait a few seconds for it to exit.
        await asyncio.to_thread(engine.shutdown)

    # --- requests -------------------------------------------------------------------

    async def generate(self, request: EngineRequest) -> Completion:
        meta, prompts, params = await self._prepare(request, stream=False)
        finals: dict[int, RequestOutput] = {}
        async with contextlib.aclosing(self._run(request.request_id, prompts, params)) as outputs:
            async for prompt_index, output in outputs:
                finals[prompt_index] = output
        prompt_tokens = sum(len(prompt["prompt_token_ids"]) for prompt in prompts)
        return final_completion(meta, [finals[index] for index in range(len(prompts))], prompt_tokens)

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamChunk]:
        meta, prompts, params = await self._prepare(request, stream=True)
        encoder = StreamEncoder(meta, prompt_tokens=sum(len(prompt["prompt_token_ids"]) for prompt in prompts))
        # Closing the stream early closes _run at once, which aborts the vLLM request.
        async with contextlib.aclosing(self._run(request.request_id, prompts, params)) as outputs:
            async for prompt_index, output in outputs:
                for chunk in encoder.feed(prompt_index, output):
                    yield chunk
        yield encoder.usage_chunk()

    async def embed(self, request: EngineRequest) -> Completion:
        if self.options.task != "embed":
            raise InvalidRequest(f"deployment {self.name!r} serves text generation, not embeddings", param="model")
        engine = self._require()
        body = request.body
        inputs, encode_base64 = embedding_inputs(body), as_base64(body)
        params = pooling_params(body, engine.model_config)
        token_lists = await asyncio.to_thread(self._tokenize, inputs)
        check_lengths(token_lists, self._limits.max_model_len)
        prompts = self._engine_prompts(token_lists, request.tenant)
        async with self._tracked(request.request_id, len(prompts)) as (engine, ids):
            outputs = await pool_all(engine, prompts, params, ids)
        return await asyncio.to_thread(embedding_completion, self._model_name(body), outputs, encode_base64)

    async def abort(self, request_id: str) -> None:
        engine = self._engine
        if engine is not None:
            await engine.abort(self._active.get(request_id, [request_id]))

    async def health(self) -> bool:
        engine = self._engine
        return engine is not None and not engine.errored

    def load(self) -> Load:
        engine = self._engine
        if engine is None:
            return Load()
        # vLLM's own count of unfinished requests is exact. The scheduler's report of
        # how many wait lags a step behind, so a fresh burst beyond the batch limit
        # is counted as waiting before the scheduler has seen it.
        total = engine.get_num_unfinished_requests()
        waiting = min(total, max(self._queue.waiting, total - self._max_running))
        return Load(running=total - waiting, waiting=waiting)

    # --- internals --------------------------------------------------------------------

    def _require(self) -> AsyncLLM:
        engine = self._engine
        if engine is None or engine.errored:
            raise UpstreamConnectError(f"vLLM engine {self.name!r} is not running")
        return engine

    async def _prepare(
        self, request: EngineRequest, *, stream: bool
    ) -> tuple[ResponseMeta, list[TokensInput], SamplingParams]:
        """Validate and tokenize: request body --> engine prompts and sampling params."""
        engine = self._require()
        if self.options.task == "embed":
            raise InvalidRequest(f"deployment {self.name!r} serves embeddings only", param="model")
        body = request.body
        tools: ToolOutput | None = None
        if request.kind == "chat":
            messages, plan = chat_messages(body), tool_plan(body)
            shown = plan.tools if plan is not None and plan.mode != "none" else None
            token_lists = [await asyncio.to_thread(self._render_chat, messages, shown)]
            constraint, tools = self._tool_reading(body, plan)
        elif request.kind == "completion":
            token_lists = await asyncio.to_thread(self._tokenize, completion_prompts(body))
            constraint = response_constraint(body)
        else:
            raise InvalidRequest(f"deployment {self.name!r} does not serve {request.kind} requests")
        kwargs = sampling_kwargs(request.kind, body, prompt_len=max(map(len, token_lists)), limits=self._limits)
        if isinstance(tools, ParsedToolCalls) and not tools.skip_special_tokens:
            kwargs["skip_special_tokens"] = False
        if constraint is not None:
            kwargs["structured_outputs"] = structured_outputs(constraint)
        params = sampling_params(kwargs, stream=stream)
        if constraint is not None:
            # Compiling a schema into a grammar is CPU work.
            await asyncio.to_thread(verify_structured, engine, params, constraint.param)
        meta = ResponseMeta(
            kind=request.kind,
            response_id=("chatcmpl-" if request.kind == "chat" else "cmpl-") + (request.request_id or uuid.uuid4().hex),
            model=self._model_name(body),
            created=int(time.time()),
            n=params.n,
            top_logprobs=kwargs.get("logprobs"),
            tools=tools,
        )
        return meta, self._engine_prompts(token_lists, request.tenant), params

    def _tool_reading(self, body: JsonObject, plan: ToolPlan | None) -> tuple[JsonConstraint | None, ToolOutput | None]:
        """A forced call decodes under its schema; an auto one is read by the deployment's parser, if any."""
        answer = response_constraint(body)
        if plan is not None and plan.mode == "forced":
            # The call replaces this turn's text answer; response_format shapes a later one.
            return JsonConstraint(schema=forced_call_schema(plan), param="tool_choice"), ForcedCalls()
        parsed = None
        if plan is not None and plan.mode == "auto" and self._tool_parser is not None:
            assert self._tokenizer is not None
            parsed = ParsedToolCalls(self._tool_parser, self._tokenizer, plan.tools)
        return answer, parsed

    def _engine_prompts(self, token_lists: list[list[int]], tenant: str) -> list[TokensInput]:
        prompts: list[TokensInput] = []
        for ids in token_lists:
            # An engine input vLLM takes as is: already tokenized, nothing to render.
            prompt: TokensInput = {"type": "token", "prompt_token_ids": ids}
            if tenant:
                prompt["cache_salt"] = tenant
            prompts.append(prompt)
        return prompts

    def _model_name(self, body: JsonObject) -> str:
        model = body.get("model")
        return model if isinstance(model, str) else self.spec.model

    def _render_chat(self, messages: list[Any], tools: list[dict[str, Any]] | None) -> list[int]:
        from jinja2 import TemplateError

        tokenizer = self._tokenizer
        assert tokenizer is not None
        try:
            ids = tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            # The model's template refuses some conversations (role order and the like).
            raise InvalidRequest(f"the model's chat template rejected the messages: {exc}", param="messages") from None
        if not isinstance(ids, list):
            raise UpstreamError(f"tokenizer of {self.name!r} did not return token ids for the chat template")
        return ids

    def _tokenize(self, prompts: list[str | list[int]]) -> list[list[int]]:
        tokenizer = self._tokenizer
        assert tokenizer is not None
        return [tokenizer.encode(prompt) if isinstance(prompt, str) else prompt for prompt in prompts]

    async def _run(
        self, request_id: str, prompts: list[TokensInput], params: SamplingParams
    ) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        """Outputs of every prompt as (prompt index, output)."""
        async with self._tracked(request_id, len(prompts)) as (engine, ids):
            if len(prompts) == 1:
                async with contextlib.aclosing(engine.generate(prompts[0], params, ids[0])) as outputs:
                    async for output in outputs:
                        yield 0, output
            else:
                async with contextlib.aclosing(merged(engine, prompts, params, ids)) as items:
                    async for item in items:
                        yield item

    @contextlib.asynccontextmanager
    async def _tracked(self, request_id: str, count: int) -> AsyncIterator[tuple[AsyncLLM, list[str]]]:
        """The engine and one vLLM request id per prompt, known to ``abort``; aborts whatever is left on exit."""
        engine = self._require()
        request_id = request_id or uuid.uuid4().hex
        ids = [request_id] if count == 1 else [f"{request_id}-{index}" for index in range(count)]
        self._active[request_id] = ids
        finished = False
        try:
            yield engine, ids
            finished = True
        except GatewayError:
            raise
        except Exception as exc:
            raise translate_error(exc) from exc
        finally:
            self._active.pop(request_id, None)
            # The consumer went away (closed stream, cancelled task) or the engine failed.
            if not finished and not engine.errored:
                await engine.abort(ids)
