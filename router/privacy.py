"""The PII step: scan what a request sends, then block, restrict, redact or mask it.

A tenant whose policy is off never reaches this module. Cloud deployments get
the redacted (or masked) body; self-hosted ones may see the original. Under
`mask_and_restore` the client gets its own values back, streams included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.context import RequestContext
from router.metrics import Metrics

if TYPE_CHECKING:
    from policies.pii import PiiPolicy


async def apply_pii(ctx: RequestContext, policy: PiiPolicy, metrics: Metrics) -> None:
    from policies.pii import BlockedForPii, PiiAnalyzerError, scan_request

    try:
        result = await scan_request(ctx.kind, ctx.body, policy)
    except PiiAnalyzerError:
        metrics.pii_failures.inc()
        if policy.on_analyzer_error != "restrict":
            raise  # fail closed: unscanned text goes nowhere
        # Unscanned text may hold anything: only self-hosted deployments may see it.
        ctx.self_hosted_only = True
        ctx.pii_counts = {"UNSCANNED": 1}
        return
    ctx.pii_counts = result.counts
    for entity, count in result.counts.items():
        metrics.pii_entities.labels(entity).inc(count)
    if not result.found:
        return
    if policy.action == "block":
        raise BlockedForPii(result.counts)
    if policy.action == "restrict":
        ctx.self_hosted_only = True
        return
    ctx.cloud_body = result.body
    ctx.restorer = result.restorer
