"""Whether a batch is passed through to an upstream's own Batch API, decided once, when it is validated.

It is when every line names one alias, the deployment the tenant's routing
policy plans first for that alias says ``batches: native``, and the tenant
has no PII policy: text a PII policy would block or redact is never sent to a
cloud provider unscanned, so such a tenant's batches are run by the gateway,
which applies the policy to each request. Any other batch is run by the
gateway too (``router.batch_job``).
"""

from __future__ import annotations

from msgspec.structs import replace

from core.errors import GatewayError
from policies.routing import Deployment
from router.batch_records import BatchRecord, NativeState
from router.snapshot import Snapshot
from serving.openai_batches import batch_api


def native_deployment(snapshot: Snapshot, tenant: str, alias: str | None) -> Deployment | None:
    """The deployment a batch of ``alias`` is passed through to, or None: the gateway runs it."""
    if alias is None or snapshot.policies.pii(tenant) is not None:
        return None
    try:
        plan = snapshot.router.plan(alias, None, snapshot.policies.routing(tenant))
    except GatewayError:
        return None
    if not plan.deployments or batch_api(plan.deployments[0].engine) is None:
        return None
    return plan.deployments[0]


def with_native(record: BatchRecord, deployment: Deployment | None) -> BatchRecord:
    """A batch just validated, marked to be passed through to ``deployment`` (None: left to the gateway)."""
    if deployment is None or record.native is not None or record.batch.status != "in_progress":
        return record
    return replace(record, native=NativeState(deployment=deployment.name))
