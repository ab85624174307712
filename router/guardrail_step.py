"""The guardrail engine (``policies.guardrails``) as a pipeline step: pre-call, post-call and during-stream.

A request reaches this module only when its snapshot has a guardrail
anywhere (``Snapshot.guardrails`` is not None); then ``pre`` looks up the
request's guardrails (its tenant's list, then its alias's, built once per
snapshot: ``router.guardrail_index``) and keeps them on ``ctx.guardrails``
(None when neither has any, so ``post`` and the stream screen cost one check).

- ``pre`` runs after the PII step and before routing and admission, on the
  body as the client sent it (``ctx.body``; what PII redacts for cloud
  deployments is ``ctx.cloud_body``): a secret or a denied pattern in the
  client's prompt is refused whatever the PII policy would have masked, and a
  blocked request reaches no engine and reserves nothing.
- ``post`` runs on a non-streamed answer as the deployment sent it (before
  masked values are restored): a block answers 400 in its place; the upstream
  call is still billed.
- ``cut`` ends a stream a stream guardrail blocked: a last chunk with
  ``finish_reason: content_filter`` and the end of the stream (the surface's
  own, through its renderer; a native Responses stream gets an in-band
  error event), never a retry. The status stays 200 (the headers are out);
  the ledger's ``error`` and ``guardrail`` say what happened.

Every block (a finding, or a ``fail_closed`` fault) is a 400
``guardrail_blocked`` (503 ``guardrail_unavailable`` for a fault) naming the
guardrail, never the text; the ledger row names the guardrail, an audit entry
(``guardrail.block``, actor ``system``) is written in the background and
``sluicegate_guardrail_verdicts_total{guardrail, mode, outcome}`` counts it
(``blocked``; ``warned`` for a warning, ``fault`` for a fault that failed open).

The gateway owns what the guardrails use: a bounded thread pool for the
detectors and an HTTP session for moderation deployments, both made on
first use and closed with the gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from prometheus_client import CollectorRegistry, Counter

from core.config_guardrails import GuardrailConfig, Moderation
from core.errors import GatewayError
from policies.guardrails import GuardrailDeps, Guardrails, Result, build_guardrails
from policies.guardrails_moderation import HttpModerator, Moderator
from policies.guardrails_stream import StreamScreen, content_filter_chunk
from policies.guardrails_types import Verdict, verdict_error
from router.context import RequestContext
from router.tenant_records import TenantStore

if TYPE_CHECKING:
    from router.snapshot import Snapshot

log = logging.getLogger("sluicegate.guardrails")

AUDIT_ACTION = "guardrail.block"
_DONE = b"data: [DONE]\n\n"


class GuardrailStep:
    def __init__(self, registry: CollectorRegistry, tenants: TenantStore, workers: int = 2) -> None:
        self.verdicts = Counter(
            "sluicegate_guardrail_verdicts_total",
            "Guardrail verdicts that were not a pass: blocked, warned, or a fault that failed open.",
            ("guardrail", "mode", "outcome"), registry=registry,
        )  # fmt: skip
        self._tenants = tenants
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._session: aiohttp.ClientSession | None = None
        self._moderators: dict[tuple[str, str, str | None, str], Moderator] = {}
        self._audits: set[asyncio.Task[None]] = set()

    # --- building ---------------------------------------------------------------

    def guardrails(self, ctx: RequestContext) -> Guardrails | None:
        """The request's guardrails (its tenant's, then its alias's); None when it has none."""
        snapshot = ctx.snapshot
        index = snapshot.guardrails
        if index is None:
            return None
        return index.get(ctx.principal.tenant, ctx.alias, lambda configs: self.build(snapshot, configs))

    def build(self, snapshot: Snapshot, configs: Sequence[GuardrailConfig]) -> Guardrails:
        deps = GuardrailDeps(self.executor(), self._moderators_of(snapshot, configs), snapshot.plugins.guardrails)
        return build_guardrails(configs, deps)

    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="sluicegate-guardrail")
        return self._executor

    def moderator(self, snapshot: Snapshot, deployment: str, model: str | None = None) -> Moderator:
        """A client of ``deployment``'s ``/v1/moderations``, sending ``model`` (the deployment's own by default).

        Kept by what it is made of (the spec's key was resolved with the snapshot), so the route makes none per request.
        """
        spec = snapshot.specs[deployment]
        key = (spec.name, spec.base_url, spec.api_key, model or spec.model)
        moderator = self._moderators.get(key)
        if moderator is None:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            if len(self._moderators) > 1000:  # specs changed that often: start over rather than grow
                self._moderators.clear()
            moderator = self._moderators[key] = HttpModerator(
                self._session, spec.base_url, name=spec.name, api_key=spec.api_key, model=key[3]
            )
        return moderator

    def _moderators_of(self, snapshot: Snapshot, configs: Sequence[GuardrailConfig]) -> dict[str, Moderator]:
        # By deployment: the first guardrail naming one picks the model sent.
        moderators: dict[str, Moderator] = {}
        for config in configs:
            if isinstance(config, Moderation) and config.deployment not in moderators:
                moderators[config.deployment] = self.moderator(snapshot, config.deployment, config.model)
        return moderators

    # --- the steps --------------------------------------------------------------

    async def pre(self, ctx: RequestContext) -> None:
        """Check the request as the client sent it; a block raises (400, or 503 for a fault)."""
        guardrails = ctx.guardrails = self.guardrails(ctx)
        if guardrails is not None and guardrails.pre:
            self._judged(ctx, "pre", await guardrails.pre.check_request(ctx.kind, ctx.body))

    async def post(self, ctx: RequestContext, body: bytes) -> None:
        """Check a whole answer (JSON) before the client has it; a block raises."""
        guardrails = ctx.guardrails
        if guardrails is None or not guardrails.post:
            return
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return
        if isinstance(decoded, dict):
            self._judged(ctx, "post", await guardrails.post.check_response(decoded))

    def _judged(self, ctx: RequestContext, mode: str, result: Result) -> None:
        self._noted(ctx, mode, result.warnings, result.faults)
        if result.blocked is not None:
            self.blocked(ctx, mode, result.blocked)
            result.raise_for_block()

    def _noted(self, ctx: RequestContext, mode: str, warnings: Sequence[Verdict], faults: Sequence[Verdict]) -> None:
        for verdict in warnings:
            self.verdicts.labels(verdict.guardrail, mode, "warned").inc()
            log.info("guardrail %s warned on request %s (%s)", verdict.guardrail, ctx.request_id, verdict.category)
        for verdict in faults:
            self.verdicts.labels(verdict.guardrail, mode, "fault").inc()

    def blocked(self, ctx: RequestContext, mode: str, verdict: Verdict) -> None:
        """Record a block: the ledger's field, the metric, a log line and the audit entry (never the text)."""
        ctx.guardrail = verdict.guardrail
        self.verdicts.labels(verdict.guardrail, mode, "blocked").inc()
        log.info("guardrail %s blocked request %s (%s, %s)", verdict.guardrail, ctx.request_id, mode, verdict.category)
        event = {
            "request_id": ctx.request_id, "tenant": ctx.principal.tenant, "key_id": ctx.principal.key_id, "model": ctx.alias,
            "mode": mode, "guardrail": verdict.guardrail, "category": verdict.category, "fault": verdict.fault,
        }  # fmt: skip
        self._spawn(self._audit(ctx.principal.tenant, verdict.guardrail, event))

    def screen(self, ctx: RequestContext) -> StreamScreen | None:
        guardrails = ctx.guardrails
        return guardrails.stream.screen() if guardrails is not None else None

    def cut(self, ctx: RequestContext, screen: StreamScreen, verdict: Verdict, data: bytes) -> list[bytes]:
        """End a stream at the chunk ``data`` a stream guardrail blocked: the framed closing events, in its place."""
        self.screened(ctx, screen)
        self.blocked(ctx, "stream", verdict)
        error = verdict_error(verdict)
        ctx.status, ctx.error = 200, error.code
        render = ctx.render
        if render is None:
            return [b"data: " + content_filter_chunk(data) + b"\n\n", _DONE]
        if ctx.kind == "responses":
            return [render.error(ctx, error)]
        return [render.chunk(ctx, content_filter_chunk(data)), render.end(ctx)]

    def screened(self, ctx: RequestContext, screen: StreamScreen) -> None:
        """A stream's warnings and faults, counted once it ends."""
        self._noted(ctx, "stream", screen.warnings, screen.faults)

    # --- audit and shutdown -----------------------------------------------------

    async def _audit(self, tenant: str, guardrail: str, event: dict[str, Any]) -> None:
        try:
            await self._tenants.record_event("system", AUDIT_ACTION, tenant, f"guardrail/{guardrail}", event)
        except (GatewayError, OSError) as exc:
            log.warning("guardrail %s: audit entry not written (%s)", guardrail, type(exc).__name__)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def close(self, grace_s: float = 5.0) -> None:
        """Write the audit entries under way (within ``grace_s``), then stop the pool and the session."""
        if self._audits:
            _, late = await asyncio.wait(list(self._audits), timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._moderators.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
