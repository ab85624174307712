"""Glue to vLLM's runtime: sampling params, errors, stats hook, device pinning.

Everything that touches vLLM imports it inside the function, so importing this
module never needs vLLM installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncGenerator, Iterator
from typing import TYPE_CHECKING, Any

from core.errors import GatewayError, InvalidRequest, Overloaded, UpstreamError
from serving.structured_outputs import JsonConstraint

if TYPE_CHECKING:
    from vllm.inputs import TokensInput
    from vllm.outputs import RequestOutput
    from vllm.sampling_params import SamplingParams, StructuredOutputsParams
    from vllm.v1.engine.async_llm import AsyncLLM

# Backend messages can quote a whole schema; the point is made well before this.
_MESSAGE_CHARS = 300

# CUDA_VISIBLE_DEVICES is process-wide: engines starting at once must not interleave.
_DEVICE_ENV_LOCK = threading.Lock()


class QueueSnapshot:
    """The scheduler's last reported waiting count, fed by vLLM's stats hook."""

    waiting = 0


async def merged(
    engine: AsyncLLM, prompts: list[TokensInput], params: SamplingParams, ids: list[str]
) -> AsyncGenerator[tuple[int, RequestOutput], None]:
    """Several prompts generated concurrently, their outputs interleaved as they come."""
    queue: asyncio.Queue[tuple[int, RequestOutput | Exception | None]] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            async for output in engine.generate(prompts[index], params, ids[index]):
                queue.put_nowait((index, output))
            queue.put_nowait((index, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put_nowait((index, exc))

    tasks = [asyncio.create_task(pump(index)) for index in range(len(prompts))]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sampling_params(kwargs: dict[str, Any], *, stream: bool) -> SamplingParams:
    """Streams get each step's new tokens; whole responses only the final output."""
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    output_kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    try:
        return SamplingParams(**kwargs, output_kind=output_kind)
    except (VLLMValidationError, ValueError, TypeError) as exc:
        raise InvalidRequest(f"invalid sampling parameters: {exc}") from None


def structured_outputs(constraint: JsonConstraint) -> StructuredOutputsParams:
    from vllm.sampling_params import StructuredOutputsParams

    if constraint.schema is None:
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=constraint.schema)


def verify_structured(engine: AsyncLLM, params: SamplingParams, param: str) -> None:
    """Runs vLLM's own request checks now, so a schema the backend cannot enforce is a 400 before generation.

    vLLM checks again when the request is added; the backend choice made here holds.
    """
    from vllm.exceptions import VLLMValidationError

    config = engine.vllm_config
    try:
        params.verify(engine.model_config, config.speculative_config, config.structured_outputs_config, engine.tokenizer)
    except (VLLMValidationError, ValueError, TypeError) as exc:
        named = getattr(exc, "parameter", None)
        detail = str(exc.args[0] if exc.args else type(exc).__name__)[:_MESSAGE_CHARS]
        raise InvalidRequest(f"'{named or param}' cannot be enforced by this engine: {detail}", param=named or param) from None


def translate_error(exc: Exception) -> GatewayError:
    """vLLM failure --> gateway error; vLLM's messages name parameters, not prompt text."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    if isinstance(exc, VLLMClientError):
        return InvalidRequest(str(exc.args[0] if exc.args else exc)[:_MESSAGE_CHARS], param=getattr(exc, "parameter", None))
    if isinstance(exc, GracefulHTTPError):
        return Overloaded(f"vLLM is at capacity: {exc}")
    if isinstance(exc, EngineDeadError):
        return UpstreamError("vLLM engine died")
    if isinstance(exc, EngineGenerateError) and isinstance(exc.__cause__, ValueError):
        return InvalidRequest(str(exc.__cause__))
    return UpstreamError(f"vLLM failed the request ({type(exc).__name__})")


@contextlib.contextmanager
def visible_device(index: int | None) -> Iterator[None]:
    """Show vLLM's child processes one GPU while they start, then restore the env.

    ``index`` counts the GPUs this process may use: when CUDA_VISIBLE_DEVICES
    already narrows them, it picks from that list.
    """
    if index is None:
        yield
        return
    with _DEVICE_ENV_LOCK:
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        visible = [device.strip() for device in previous.split(",")] if previous else None
        if visible is not None and index >= len(visible):
            raise ValueError(f"gpu_index {index} is beyond the {len(visible)} GPUs in CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[index] if visible is not None else str(index)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = previous


def queue_stat_logger(snapshot: QueueSnapshot) -> Any:
    """A vLLM stat logger class that only keeps the scheduler's waiting count."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class QueueStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self._snapshot = snapshot

        def record(
            self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
        ) -> None:
            if scheduler_stats is not None:
                self._snapshot.waiting = scheduler_stats.num_waiting_reqs

        def log_engine_initialized(self) -> None:
            return None

    return QueueStatLogger
