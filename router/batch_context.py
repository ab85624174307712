"""A request of a batch: what the pipeline knows about it, plus the batch it belongs to.

Billing reads ``batch_id`` to reserve and charge at the deployment's batch price
and to name the batch in the ledger row; everything else treats it as any request.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.context import RequestContext

# The route batch requests are counted under in metrics, and the queue class they wait in.
BATCH_ROUTE = "batch"


@dataclass(slots=True)
class BatchContext(RequestContext):
    batch_id: str = ""
