"""The guardrail engine: a tenant's or an alias's ``guardrails:`` list, run as pre-call, post-call and during-stream steps.

``build_guardrails(configs, deps)`` turns a config list into ``Guardrails``: one
``GuardrailSet`` per mode (``pre``, ``post``; ``stream`` makes a
``StreamScreen`` per response). Built once per config version, reused by every
request. The pipeline calls::

    result = await guardrails.pre.check_request(kind, body)     # before routing: tools, secrets, injection...
    result.raise_for_block()                                    # 400 guardrail_blocked / 503 guardrail_unavailable
    result = await guardrails.post.check_response(body)         # a whole (non-stream) answer
    screen = guardrails.stream.screen()                         # None when no stream guardrail: nothing per chunk
    verdict = screen.feed_chunk(data)                           # per chunk; a verdict: end with content_filter

Each guardrail runs under its own ``timeout_s``; one that raises or runs past it
follows its ``on_error``: ``fail_open`` lets the request go on (the fault is in
``result.faults`` for logs and metrics), ``fail_closed`` blocks it with category
``guardrail_error`` or ``guardrail_timeout``. A finding becomes a block or a
warning by the guardrail's ``action``. The guardrails of a set run concurrently;
the first block in list order wins. Nothing here raises into the request path
but ``raise_for_block``.

A plugin's guardrail comes in by name (``deps.plugins``) and runs under the
same timeout, fail policy and action as a built-in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from core.config_guardrails import (
    DenyPatterns,
    GuardrailConfig,
    Moderation,
    PluginGuardrail,
    PromptInjection,
    Secrets,
    ToolAllowlist,
)
from policies.guardrails_builtin import DenyPatternsGuard, SecretsGuard, ToolAllowlistGuard
from policies.guardrails_injection import PromptInjectionGuard
from policies.guardrails_moderation import ModerationGuard, Moderator
from policies.guardrails_stream import Bound, StreamScreen, action_applied, fault
from policies.guardrails_texts import Kind, output_texts, request_texts
from policies.guardrails_types import (
    GUARDRAIL_ERROR,
    GUARDRAIL_TIMEOUT,
    Guardrail,
    StreamingGuardrail,
    Text,
    Verdict,
    verdict_error,
)

_log = logging.getLogger("sluicegate.guardrails")


@dataclass(frozen=True, slots=True)
class GuardrailDeps:
    """What building guardrails needs from the gateway, which owns each of these."""

    # Bounded thread pool for CPU-heavy scans (secrets, patterns, injection heuristics on large texts).
    executor: Executor
    # Moderation classifiers by deployment name (an ``HttpModerator`` on the deployment's session).
    moderators: Mapping[str, Moderator] = field(default_factory=dict)
    # Guardrails plugins provide, by the name they register.
    plugins: Mapping[str, Guardrail] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Result:
    """What a set decided: the first block (in list order), warnings, and faults that failed open."""

    blocked: Verdict | None = None
    warnings: tuple[Verdict, ...] = ()
    faults: tuple[Verdict, ...] = ()

    def raise_for_block(self) -> None:
        if self.blocked is not None:
            raise verdict_error(self.blocked)


_PASSED = Result()


class GuardrailSet:
    """The guardrails of one mode, each with its policy."""

    __slots__ = ("_bound", "mode")

    def __init__(self, mode: str, bound: Sequence[Bound]) -> None:
        self.mode = mode
        self._bound = tuple(bound)

    def __bool__(self) -> bool:
        return bool(self._bound)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.config.name for b in self._bound)

    async def check_request(self, kind: Kind, body: dict[str, Any]) -> Result:
        return await self.check(request_texts(kind, body)) if self._bound else _PASSED

    async def check_response(self, body: dict[str, Any]) -> Result:
        return await self.check(output_texts(body)) if self._bound else _PASSED

    async def check(self, texts: Sequence[Text]) -> Result:
        if not self._bound:
            return _PASSED
        if len(self._bound) == 1:
            verdicts = [await _run(self._bound[0], texts)]
        else:
            verdicts = await asyncio.gather(*(_run(b, texts) for b in self._bound))
        return Result(
            blocked=next((v for v in verdicts if v.outcome == "blocked"), None),
            warnings=tuple(v for v in verdicts if v.outcome == "warned"),
            faults=tuple(v for v in verdicts if v.fault and v.outcome == "allowed"),
        )

    def screen(self) -> StreamScreen | None:
        """A screen for one streamed response; None when this set has no guardrail (nothing to do per chunk)."""
        return StreamScreen(self._bound) if self._bound else None


async def _run(bound: Bound, texts: Sequence[Text]) -> Verdict:
    config = bound.config
    try:
        async with asyncio.timeout(config.timeout_s):
            verdict = await bound.guard.check(texts)
        if not isinstance(verdict, Verdict):
            raise TypeError(f"check returned {type(verdict).__name__}, not a Verdict")
    except TimeoutError:
        _log.warning("guardrail %s timed out after %ss (%s)", config.name, config.timeout_s, config.on_error)
        return fault(config, GUARDRAIL_TIMEOUT)
    except Exception as exc:  # noqa: BLE001  a guardrail's failure is contained by its on_error
        # The exception's type only: a message may quote the text under check.
        _log.warning("guardrail %s failed (%s; %s)", config.name, type(exc).__name__, config.on_error)
        return fault(config, GUARDRAIL_ERROR)
    return action_applied(config, verdict)


@dataclass(frozen=True, slots=True)
class Guardrails:
    """One guardrail list, by mode."""

    pre: GuardrailSet
    post: GuardrailSet
    stream: GuardrailSet

    def __bool__(self) -> bool:
        return bool(self.pre or self.post or self.stream)


def build_guardrails(configs: Sequence[GuardrailConfig], deps: GuardrailDeps) -> Guardrails:
    """The engine for a config list; ValueError (naming the guardrail) for a moderation deployment or plugin that is missing."""
    by_mode: dict[str, list[Bound]] = {"pre": [], "post": [], "stream": []}
    for config in configs:
        guard = _guard(config, deps)
        if config.mode == "stream" and not isinstance(guard, StreamingGuardrail):
            raise ValueError(f"guardrail {config.name!r}: its plugin guardrail cannot run during a stream (it has no `stream()`)")
        by_mode[config.mode].append(Bound(config, guard))
    return Guardrails(*(GuardrailSet(mode, bound) for mode, bound in by_mode.items()))


def _guard(config: GuardrailConfig, deps: GuardrailDeps) -> Guardrail:
    if isinstance(config, ToolAllowlist):
        return ToolAllowlistGuard(config)
    if isinstance(config, Secrets):
        return SecretsGuard(config, deps.executor)
    if isinstance(config, DenyPatterns):
        return DenyPatternsGuard(config, deps.executor)
    if isinstance(config, PromptInjection):
        return PromptInjectionGuard(config, deps.executor)
    if isinstance(config, Moderation):
        moderator = deps.moderators.get(config.deployment)
        if moderator is None:
            raise ValueError(f"guardrail {config.name!r}: no moderation deployment {config.deployment!r}")
        return ModerationGuard(config, moderator)
    assert isinstance(config, PluginGuardrail)
    plugin = deps.plugins.get(config.plugin)
    if plugin is None:
        raise ValueError(f"guardrail {config.name!r}: no plugin provides a guardrail named {config.plugin!r}")
    return plugin
