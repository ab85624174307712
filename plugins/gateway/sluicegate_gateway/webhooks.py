"""POST /webhooks/{github,gitlab,ado}: a signed delivery --> an orchestrator task for the repository's tenant.

In order, each step refusing what it cannot accept:

1. the raw body, bounded (413 beyond ``max_body_bytes``);
2. the provider's proof checked against every secret configured for it
   (``signatures``): none matches --> 401, the same answer as for a
   repository nobody configured, so a caller learns nothing of which;
3. GitLab and Azure DevOps: an ``X-Sluicegate-Timestamp`` (Unix seconds), when
   sent, must be within ``replay_window_s`` of now (401 otherwise). GitHub
   signs no timestamp: there the delivery id is the replay defence;
4. the JSON parsed and described (400 naming a missing field); the payload's
   repository must be one whose secret matched (401 otherwise);
5. no rule takes the event --> 202 ``ignored``;
6. the delivery id claimed in Redis (``dedup``): a redelivery --> 200 ``duplicate``;
7. the task created with the idempotency key ``webhook:{provider}:{delivery id}``,
   so even a redelivery after the TTL finds its task --> 202 ``queued``.

Nothing is queued before step 7; a failure there forgets the delivery id so
that the provider's retry can queue it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import msgspec
from redis.exceptions import RedisError
from sluicegate_orchestrator import Orchestrator

from core.errors import AuthenticationFailed, GatewayError, InvalidRequest
from sluicegate_gateway.dedup import DeliveriesUnavailable, DeliveryLog
from sluicegate_gateway.events import Described, delivery_id, describe, normalise
from sluicegate_gateway.http import Answer, json_answer
from sluicegate_gateway.options import Binding, EventRule, Provider
from sluicegate_gateway.payload import Doc, MalformedEvent
from sluicegate_gateway.signatures import matching

TIMESTAMP_HEADER = "x-sluicegate-timestamp"
_decoder = msgspec.json.Decoder()


class Unverified(AuthenticationFailed):
    code = "invalid_signature"


class StaleDelivery(AuthenticationFailed):
    code = "stale_delivery"


class Webhooks:
    def __init__(
        self, bindings: Mapping[str, Sequence[Binding]], deliveries: DeliveryLog, orchestrator: Orchestrator, *, queue: str,
        replay_window_s: float, log: logging.Logger, clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self._bindings = bindings
        self._deliveries = deliveries
        self._orchestrator = orchestrator
        self._queue = queue
        self._window_s = replay_window_s
        self._log = log
        self._clock = clock

    async def deliver(self, provider: Provider, headers: Mapping[str, bytes], body: bytes, trace_id: str) -> Answer:
        matched = matching(provider, self._bindings.get(provider, ()), headers, body)
        if not matched:
            raise Unverified("The delivery's signature is missing or invalid, or its repository is not registered here.")
        if provider != "github":
            self._check_timestamp(headers)
        doc = Doc(_parse(body))
        described = describe(provider, headers, doc)
        found = _choose(described, matched)
        if found is None:
            raise Unverified("The delivery's signature is missing or invalid, or its repository is not registered here.")
        binding, rule = found
        if rule is None:
            return json_answer(202, {"status": "ignored", "event": described.event})
        delivery = delivery_id(provider, headers, doc)
        item = normalise(provider, described, doc, binding.repo.repository, delivery)
        if not await self._deliveries.first(provider, delivery):
            return json_answer(200, {"status": "duplicate", "delivery_id": delivery})
        try:
            task, created = await self._orchestrator.create(
                binding.repo.tenant, rule.kind, msgspec.to_builtins(item), idempotency_key=f"webhook:{provider}:{delivery}",
                queue=self._queue, trace_id=trace_id,
            )  # fmt: skip
        except BaseException as exc:
            await self._deliveries.forget(provider, delivery)
            if isinstance(exc, GatewayError):
                raise
            if isinstance(exc, (RedisError, OSError)):
                raise DeliveriesUnavailable("The task queue is unavailable; try again shortly.", retry_after=5) from None
            raise
        if not created:
            return json_answer(200, {"status": "duplicate", "delivery_id": delivery, "task_id": task.id})
        self._log.info("webhook %s %s --> task %s (%s) for tenant %s", provider, described.event, task.id, rule.kind, task.tenant)
        return json_answer(202, {"status": "queued", "task_id": task.id, "kind": rule.kind, "delivery_id": delivery})

    def _check_timestamp(self, headers: Mapping[str, bytes]) -> None:
        raw = headers.get(TIMESTAMP_HEADER)
        if raw is None:
            return
        try:
            sent = float(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise InvalidRequest("X-Sluicegate-Timestamp must be Unix seconds.", param="X-Sluicegate-Timestamp") from None
        if not abs(self._clock() - sent) <= self._window_s:
            raise StaleDelivery("The delivery's timestamp is outside the replay window.")


def _parse(body: bytes) -> dict[str, object]:
    try:
        data = _decoder.decode(body)
    except msgspec.DecodeError:
        raise MalformedEvent("The delivery's body is not valid JSON.", param="body") from None
    if not isinstance(data, dict):
        raise MalformedEvent("The delivery's body must be a JSON object.", param="body")
    return data


def _choose(described: Described, matched: Sequence[Binding]) -> tuple[Binding, EventRule | None] | None:
    """The entry the event belongs to and the rule that takes it (None: none does); None when no entry is its repository."""
    wanted = described.repository.casefold()
    if described.project_only:
        # An Azure DevOps work item: the first repository of its project whose rules take it.
        in_project = [b for b in matched if b.repo.repository.casefold().rsplit("/", 1)[0] == wanted]
        for binding in in_project:
            rule = described.rule(binding.repo.rules())
            if rule is not None:
                return binding, rule
        return (in_project[0], None) if in_project else None
    for binding in matched:
        if binding.repo.repository.casefold() == wanted:
            return binding, described.rule(binding.repo.rules())
    return None
