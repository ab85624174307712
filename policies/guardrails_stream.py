"""During-stream guardrails: one ``StreamScreen`` per streamed response, fed chunk by chunk.

Each stream of text in the response (a choice's content, a tool call's
arguments, a Responses output part) gets its own ``StreamGuard`` per guardrail,
made on first use. ``feed_chunk`` returns the first blocking verdict: the
pipeline then sends ``content_filter_chunk`` instead of that chunk and ends the
stream (no retry: bytes have gone out). A warning is recorded once per
guardrail and that guardrail stops for the rest of the stream.

Stream guards are synchronous and bounded by their window, so no timer runs
per chunk; a guard whose ``feed`` raises, or takes longer than its
``timeout_s``, follows ``on_error``: ``fail_closed`` blocks, ``fail_open``
switches that guardrail off for the rest of the stream (one fault recorded).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from core.config_guardrails import GuardrailConfig
from policies.guardrails_texts import chunk_deltas
from policies.guardrails_types import GUARDRAIL_ERROR, GUARDRAIL_TIMEOUT, Guardrail, Outcome, StreamGuard, StreamingGuardrail, Verdict

_log = logging.getLogger("sluicegate.guardrails")
_TEMPLATE_FIELDS = ("id", "object", "created", "model", "system_fingerprint")


@dataclass(frozen=True, slots=True)
class Bound:
    """A guardrail and the config entry that says how it runs."""

    config: GuardrailConfig
    guard: Guardrail


def fault(config: GuardrailConfig, category: str) -> Verdict:
    """A guardrail's failure, by its ``on_error``: a block, or a pass that still records the fault."""
    return Verdict("blocked" if config.on_error == "fail_closed" else "allowed", config.name, category)


def action_applied(config: GuardrailConfig, verdict: Verdict) -> Verdict:
    """A guard's verdict under the config's name and ``action`` (a finding blocks or warns)."""
    if verdict.outcome == "allowed":
        return Verdict("allowed", config.name)
    outcome: Outcome = "warned" if config.action == "warn" or verdict.outcome == "warned" else "blocked"
    return Verdict(outcome, config.name, verdict.category)


class StreamScreen:
    """The stream guardrails of one response."""

    __slots__ = ("_bound", "_guards", "_off", "faults", "fed", "hold", "warnings")

    def __init__(self, bound: Sequence[Bound]) -> None:
        self._bound = tuple(bound)
        # Characters of text the relay keeps back from the client: the longest window among the guards,
        # so that no part of a finding is sent before its last piece arrives and is screened.
        self.hold = max((getattr(b.config, "window", 0) for b in self._bound), default=0)
        # Characters of text the last ``feed_chunk`` saw.
        self.fed = 0
        self._guards: dict[tuple[Any, ...], list[StreamGuard | None]] = {}
        # Guardrails switched off for this stream (warned once, or failed open).
        self._off = [False] * len(self._bound)
        self.warnings: list[Verdict] = []
        self.faults: list[Verdict] = []

    def feed_chunk(self, data: bytes) -> Verdict | None:
        """One chunk's ``data:`` payload (chat, completion, or a Responses event); not ``[DONE]``."""
        self.fed = 0
        try:
            chunk = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return None
        for key, delta in chunk_deltas(chunk):
            self.fed += len(delta)
            verdict = self.feed(delta, key)
            if verdict is not None:
                return verdict
        return None

    def feed(self, delta: str, key: tuple[Any, ...] = (0, "content")) -> Verdict | None:
        """The next piece of one stream of text; the blocking verdict, if this piece completes a finding."""
        if not delta:
            return None
        guards = self._guards.get(key)
        if guards is None:
            guards = self._guards[key] = [None] * len(self._bound)
        for i, bound in enumerate(self._bound):
            if self._off[i]:
                continue
            verdict = self._feed_one(bound, guards, i, delta)
            if verdict is None:
                continue
            if verdict.outcome == "blocked":
                return verdict
            self._off[i] = True
            (self.warnings if verdict.outcome == "warned" else self.faults).append(verdict)
        return None

    @staticmethod
    def _feed_one(bound: Bound, guards: list[StreamGuard | None], i: int, delta: str) -> Verdict | None:
        config = bound.config
        started = time.perf_counter()
        try:
            guard = guards[i]
            if guard is None:
                assert isinstance(bound.guard, StreamingGuardrail)
                guard = guards[i] = bound.guard.stream()
            verdict = guard.feed(delta)
        except Exception as exc:  # noqa: BLE001  a guard's failure is contained by its on_error
            _log.warning("stream guardrail %s failed (%s; %s)", config.name, type(exc).__name__, config.on_error)
            return fault(config, GUARDRAIL_ERROR)
        if time.perf_counter() - started > config.timeout_s:
            _log.warning("stream guardrail %s took longer than %ss (%s)", config.name, config.timeout_s, config.on_error)
            return fault(config, GUARDRAIL_TIMEOUT)
        return None if verdict is None or verdict.outcome == "allowed" else action_applied(config, verdict)


def content_filter_chunk(data: bytes) -> bytes:
    """The chunk that ends a stream in place of ``data``: its choices, empty, finished with ``content_filter``."""
    try:
        chunk = msgspec.json.decode(data)
    except msgspec.DecodeError:
        chunk = {}
    chunk = chunk if isinstance(chunk, dict) else {}
    choices = chunk.get("choices")
    indexes = sorted({c.get("index", 0) for c in choices if isinstance(c, dict)} if isinstance(choices, list) else set()) or [0]
    completion = chunk.get("object") == "text_completion"
    ended = [{"index": i, **({"text": ""} if completion else {"delta": {}}), "finish_reason": "content_filter"} for i in indexes]
    return msgspec.json.encode({**{k: chunk[k] for k in _TEMPLATE_FIELDS if k in chunk}, "choices": ended})


class HoldBack:
    """Screened events kept from the client until ``hold`` characters of text follow them.

    A stream guard finds a secret when its last piece arrives; what came before
    it is still here, and is dropped with the rest when the stream is cut.
    """

    __slots__ = ("_chars", "_events", "_hold")

    def __init__(self, hold: int) -> None:
        self._hold = hold
        self._events: deque[tuple[bytes, int]] = deque()
        self._chars = 0

    def add(self, event: bytes, chars: int) -> list[bytes]:
        """Keep ``event`` (carrying ``chars`` of text); the events now far enough behind to send."""
        events = self._events
        events.append((event, chars))
        self._chars += chars
        out = []
        while events and self._chars - events[0][1] >= self._hold:
            sent, n = events.popleft()
            self._chars -= n
            out.append(sent)
        return out

    def flush(self) -> list[bytes]:
        """Everything kept: the stream ended without a finding."""
        out = [event for event, _ in self._events]
        self._events.clear()
        self._chars = 0
        return out
