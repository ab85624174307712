"""One line of a batch through the request pipeline, and the result line it leaves.

The pipeline is the interactive one, step for step (limits, budgets, PII,
routing, fallback, the ledger), called as ``router.serve.run`` calls it: the
request is a ``BatchContext``, so billing charges the batch price and the
ledger row names the batch, and its principal asks for the ``batch`` queue
class, so it waits behind every interactive request.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import msgspec

from core.principal import Principal
from router.batch_context import BATCH_ROUTE, BatchContext
from router.batch_records import BatchUsage, InputTokensDetails, OutputTokensDetails
from router.batch_validate import BatchLine
from router.pipeline import Pipeline
from router.snapshot import Snapshot
from router.unary import Outcome, new_request_id, serve_unary
from serving.base import Kind

log = logging.getLogger("sluicegate.batches")
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."


class _Response(msgspec.Struct):
    status_code: int
    request_id: str
    body: msgspec.Raw


class _Error(msgspec.Struct):
    code: str
    message: str


class _Result(msgspec.Struct):
    id: str
    custom_id: str
    response: _Response | None
    error: _Error | None


class _Done(msgspec.Struct):
    custom_id: str


class _InDetails(msgspec.Struct):
    cached_tokens: int = 0


class _OutDetails(msgspec.Struct):
    reasoning_tokens: int = 0


class _Usage(msgspec.Struct):
    """A response's usage: chat and completions (prompt/completion), embeddings (prompt), Responses (input/output)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    prompt_tokens_details: _InDetails | None = None
    input_tokens_details: _InDetails | None = None
    completion_tokens_details: _OutDetails | None = None
    output_tokens_details: _OutDetails | None = None


class _Body(msgspec.Struct):
    usage: _Usage | None = None


class _Answer(msgspec.Struct):
    body: _Body | None = None


class _Answered(msgspec.Struct):
    response: _Answer | None = None


_encode = msgspec.json.encode
_done_decoder = msgspec.json.Decoder(_Done)
_body_decoder = msgspec.json.Decoder(_Body)
_answered_decoder = msgspec.json.Decoder(_Answered)
def batch_principal(principal: Principal) -> Principal:
    """The creator's principal, queued in the class below every interactive one."""
    return replace(principal, priority=BATCH_ROUTE)


async def run_line(pipeline: Pipeline, snapshot: Snapshot, principal: Principal, batch_id: str, kind: Kind, line: BatchLine) -> Outcome:
    """Admit, serve and settle one request; every failure is an outcome (its error envelope), never raised."""
    ctx = BatchContext(
        request_id=new_request_id(), snapshot=snapshot, principal=principal, kind=kind, route=BATCH_ROUTE,
        alias=line.model, body=line.body, batch_id=batch_id,
    )  # fmt: skip
    return await serve_unary(pipeline, ctx, log)


def result_line(custom_id: str, outcome: Outcome) -> bytes:
    """A line of the output file (status 200) or of the error file (the error's status and envelope)."""
    response = _Response(status_code=outcome.status, request_id=outcome.request_id, body=msgspec.Raw(outcome.body))
    return _encode(_Result(id=f"batch_req_{outcome.request_id}", custom_id=custom_id, response=response, error=None)) + b"\n"


def expired_line(custom_id: str) -> bytes:
    """A line of the error file for a request the window left no time for: it never ran."""
    error = _Error(code="batch_expired", message=EXPIRED_MESSAGE)
    return _encode(_Result(id=f"batch_req_{new_request_id()}", custom_id=custom_id, response=None, error=error)) + b"\n"


def _batch_usage(usage: _Usage | None) -> BatchUsage:
    if usage is None:
        return BatchUsage()
    given = usage.prompt_tokens or usage.input_tokens
    made = usage.completion_tokens or usage.output_tokens
    cached = (usage.prompt_tokens_details or usage.input_tokens_details or _InDetails()).cached_tokens
    reasoning = (usage.completion_tokens_details or usage.output_tokens_details or _OutDetails()).reasoning_tokens
    return BatchUsage(given, InputTokensDetails(cached), made, OutputTokensDetails(reasoning), given + made)


def response_usage(body: bytes) -> BatchUsage:
    """The usage a response reports, as a Batch counts it; none when it reports none it can read."""
    try:
        return _batch_usage(_body_decoder.decode(body).usage)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return BatchUsage()


def line_usage(raw: bytes) -> BatchUsage:
    """The usage of the response a line of the output file holds."""
    try:
        answer = _answered_decoder.decode(raw).response
    except (msgspec.DecodeError, msgspec.ValidationError):
        return BatchUsage()
    return _batch_usage(answer.body.usage if answer is not None and answer.body is not None else None)


def done_id(raw: bytes) -> str | None:
    """The custom id of a whole result line; None for one a crash cut short (its request runs again)."""
    try:
        return _done_decoder.decode(raw).custom_id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
