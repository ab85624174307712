"""The Batch API (``/v1/batches``): create, retrieve, list and cancel a tenant's batches.

A batch is created ``validating``; the runner (``router.batch_runner``) checks
its input file, runs each line through the request pipeline as the key that
created it, at the batch price and in the lowest queue class, and writes the
output and error files. Another tenant's batch answers the same 404 as one
that never existed.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post

from core.errors import InvalidRequest, NotFound, PermissionDenied
from router.batch_http import caller, json_answer, limit_param, page
from router.batch_state import cancel_requested, new_record
from router.batch_validate import ENDPOINTS
from router.body import read_body
from router.decode import decode_object
from router.files_store import file_not_found
from router.openapi import BODY

_MAX_METADATA = 16
_MIN_EXPIRY_S, _MAX_EXPIRY_S = 3600, 30 * 24 * 3600


class ExpiresAfter(msgspec.Struct):
    anchor: str
    seconds: int


class BatchCreate(msgspec.Struct):
    input_file_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    endpoint: str
    completion_window: str
    metadata: dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]] | None = None
    output_expires_after: ExpiresAfter | None = None


def batch_not_found(batch_id: str) -> NotFound:
    return NotFound(f"No batch found with id '{batch_id[:80]}'.", param="batch_id", code="batch_not_found")


def _spec(body: bytes) -> BatchCreate:
    try:
        spec = msgspec.convert(decode_object(body), BatchCreate)
    except msgspec.ValidationError as exc:
        text, sep, where = str(exc).rpartition(" - at ")
        param = where.strip("`").removeprefix("$").removeprefix(".") if sep else None
        raise InvalidRequest(f"Invalid request: {text if sep else exc}.", param=param, code="invalid_value") from None
    if spec.endpoint not in ENDPOINTS:
        supported = ", ".join(ENDPOINTS)
        raise InvalidRequest(f"`endpoint` must be one of: {supported}.", param="endpoint", code="invalid_value")
    if spec.completion_window != "24h":
        raise InvalidRequest("`completion_window` must be '24h'.", param="completion_window", code="invalid_value")
    if spec.metadata is not None and len(spec.metadata) > _MAX_METADATA:
        raise InvalidRequest(f"`metadata` holds at most {_MAX_METADATA} pairs.", param="metadata", code="invalid_value")
    expiry = spec.output_expires_after
    if expiry is not None and (expiry.anchor != "created_at" or not _MIN_EXPIRY_S <= expiry.seconds <= _MAX_EXPIRY_S):
        raise InvalidRequest(
            f"`output_expires_after` must anchor at 'created_at', with `seconds` from {_MIN_EXPIRY_S} to {_MAX_EXPIRY_S}.",
            param="output_expires_after", code="invalid_value",
        )  # fmt: skip
    return spec


@post("/v1/batches", status_code=200, opt={BODY: BatchCreate})
async def create_batch(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway, principal = await caller(request)
    if principal.key_id.startswith("jwt:"):
        # A batch runs for up to a day as the key that created it, and stops when that key is revoked: a token has no such key.
        raise PermissionDenied("Batches are created with an API key, not a token.", code="api_key_required")
    spec = _spec(await read_body(request, gateway.base.server.max_body_bytes))
    source = await gateway.files.get(principal.tenant, spec.input_file_id)
    if source is None:
        raise file_not_found(spec.input_file_id)
    if source.purpose != "batch":
        raise InvalidRequest("The input file must be uploaded with purpose 'batch'.", param="input_file_id", code="invalid_file")
    record = new_record(
        principal.tenant, principal.key_id, endpoint=spec.endpoint, input_file_id=source.id, metadata=spec.metadata,
        output_expires_after_s=spec.output_expires_after.seconds if spec.output_expires_after else None,
        now=time.time(), created_ns=time.time_ns(),
    )  # fmt: skip
    await gateway.batches.create(record)
    gateway.batch_runner.wake()
    return json_answer(record.batch)


@get("/v1/batches/{batch_id:str}")
async def retrieve_batch(request: Request[Any, Any, Any], batch_id: str) -> Response[bytes]:
    gateway, principal = await caller(request)
    record = await gateway.batches.get(principal.tenant, batch_id)
    if record is None:
        raise batch_not_found(batch_id)
    return json_answer(record.batch)


@get("/v1/batches")
async def list_batches(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway, principal = await caller(request)
    limit = limit_param(request, 20, 100)
    records, more = await gateway.batches.page(principal.tenant, after=request.query_params.get("after"), limit=limit)
    return page([r.batch for r in records], [r.batch.id for r in records], more)


@post("/v1/batches/{batch_id:str}/cancel", status_code=200)
async def cancel_batch(request: Request[Any, Any, Any], batch_id: str) -> Response[bytes]:
    gateway, principal = await caller(request)
    now = time.time()
    record = await gateway.batches.update(principal.tenant, batch_id, lambda r: cancel_requested(r, now))
    if record is None:
        raise batch_not_found(batch_id)
    gateway.batch_runner.wake()
    return json_answer(record.batch)


ROUTES = [create_batch, retrieve_batch, list_batches, cancel_batch]
