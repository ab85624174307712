"""Bookkeeping for Triton calls under way: what ``abort`` can cancel, and the
responses of one generation added up into text, usage and a finish reason."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serving.base import Usage
from serving.triton_openai import estimate_tokens

if TYPE_CHECKING:
    from serving.triton_io import LLMPiece


@dataclass(slots=True, eq=False)
class InFlightCall:
    cancel: Callable[[], object]
    aborted: bool = False


class InFlight:
    """Calls under way, by request id, so ``abort`` can cancel them."""

    def __init__(self) -> None:
        self._calls: dict[str, list[InFlightCall]] = {}

    def open(self, request_id: str, cancel: Callable[[], object]) -> InFlightCall:
        call = InFlightCall(cancel)
        self._calls.setdefault(request_id, []).append(call)
        return call

    def close(self, request_id: str, call: InFlightCall) -> None:
        calls = self._calls.get(request_id)
        if calls is not None and call in calls:
            calls.remove(call)
            if not calls:
                del self._calls[request_id]

    def abort(self, request_id: str) -> None:
        for call in self._calls.get(request_id, ()):
            call.aborted = True
            call.cancel()

    def __len__(self) -> int:
        return sum(len(calls) for calls in self._calls.values())


@dataclass(slots=True)
class Tally:
    """A generation's responses, added up."""

    parts: list[str] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish: str | None = None

    def add(self, piece: LLMPiece) -> None:
        if piece.text:
            self.parts.append(piece.text)
        if piece.input_tokens is not None:
            self.input_tokens = piece.input_tokens
        if piece.output_tokens is not None:
            self.output_tokens = (self.output_tokens or 0) + piece.output_tokens
        if piece.finish_reason is not None:
            self.finish = piece.finish_reason

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def usage(self, prompt: str) -> tuple[Usage, bool]:
        """The usage, and whether any of it is an estimate."""
        prompt_tokens = self.input_tokens if self.input_tokens is not None else estimate_tokens(prompt)
        completion_tokens = self.output_tokens if self.output_tokens is not None else estimate_tokens(self.text)
        usage = Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
        return usage, self.input_tokens is None or self.output_tokens is None

    def finish_reason(self, max_tokens: int, completion_tokens: int) -> str:
        if self.finish is not None:
            return "length" if self.finish == "length" else "stop"
        return "length" if completion_tokens >= max_tokens else "stop"


def cancelled_by_abort(call: InFlightCall) -> bool:
    # An abort cancels the gRPC call, which surfaces as CancelledError in the
    # awaiting task; a cancellation of that task itself must still propagate.
    task = asyncio.current_task()
    return call.aborted and (task is None or task.cancelling() == 0)
