"""Lines of a batch passed through to an upstream's Batch API: ours --> theirs, and their results --> ours.

Going up, a line keeps its ``custom_id`` and body but names the upstream's own
model (Azure: its deployment name) and the upstream's form of the endpoint;
with budgets to hold, a request that sets no completion bound gets the one its
reservation counted. Coming back, a result line names the alias again, and
its ``id`` and ``request_id`` are the gateway's: derived from the batch and
the custom id, so that reading the same results twice (a finish resumed after
a crash) gives the same lines and the same ledger rows, which the ledger keeps
once. Pure functions: ``router.batch_native`` does the I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from router.batch_records import BatchUsage, InputTokensDetails, OutputTokensDetails
from router.batch_validate import BatchLine
from serving.base import Kind, PromptTokensDetails, Usage

# Upstream Batch statuses --> the gateway's, while it is not finished.
_RUNNING = {"validating": "in_progress", "in_progress": "in_progress", "finalizing": "finalizing", "cancelling": "cancelling"}
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class _Response(msgspec.Struct):
    status_code: int = 0
    request_id: str | None = None
    body: Any = None


class _Error(msgspec.Struct):
    code: str | None = None
    message: str | None = None


class _UpstreamResult(msgspec.Struct):
    custom_id: str
    response: _Response | None = None
    error: _Error | None = None


class _OutResponse(msgspec.Struct):
    status_code: int
    request_id: str
    body: Any


class _OutResult(msgspec.Struct):
    id: str
    custom_id: str
    response: _OutResponse | None
    error: _Error | None


class _UsageIn(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    input_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: OutputTokensDetails | None = None
    output_tokens_details: OutputTokensDetails | None = None


_result_decoder = msgspec.json.Decoder(_UpstreamResult)
_encode = msgspec.json.encode


@dataclass(slots=True, frozen=True)
class NativeResult:
    """One upstream result line as the gateway keeps it."""

    custom_id: str
    request_id: str
    status: int
    line: bytes  # the gateway's result line, newline-terminated
    # What the request used (None for a request that failed without a response that says).
    usage: Usage | None = None
    reasoning_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


def native_request_id(batch_id: str, custom_id: str) -> str:
    """The request id of a line of a passed-through batch: the same each time its result is read."""
    return hashlib.sha256(f"{batch_id}\x00{custom_id}".encode()).hexdigest()[:24]


def upstream_line(line: BatchLine, url: str, model: str, kind: Kind, max_tokens: int | None = None) -> bytes:
    """A line of the upstream's input file: the upstream's model and url; ``max_tokens`` where the request sets no bound."""
    body = {**line.body, "model": model}
    if max_tokens is not None and kind != "embedding" and not (body.get("max_tokens") or body.get("max_completion_tokens")):
        body["max_tokens"] = max_tokens
    return _encode({"custom_id": line.custom_id, "method": "POST", "url": url, "body": body}) + b"\n"


def gateway_result(raw: bytes, alias: str, batch_id: str) -> NativeResult | None:
    """An upstream result line as the gateway's: the alias as model, the gateway's ids; None for a line that is not one."""
    try:
        result = _result_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    request_id = native_request_id(batch_id, result.custom_id)
    response: _OutResponse | None = None
    usage: Usage | None = None
    reasoning = 0
    status = 500
    if result.response is not None:
        body = result.response.body
        if isinstance(body, dict):
            if "model" in body:
                body["model"] = alias
            usage, reasoning = _usage(body.get("usage"))
        status = result.response.status_code
        response = _OutResponse(status_code=status, request_id=request_id, body=body)
    error = result.error
    if error is not None and error.code is None and error.message is None:
        error = None
    line = _encode(_OutResult(id=f"batch_req_{request_id}", custom_id=result.custom_id, response=response, error=error)) + b"\n"
    code = error.code or "batch_request_failed" if error is not None else None
    if code is None and status != 200:
        code = f"upstream_{status}"
    return NativeResult(result.custom_id, request_id, status, line, usage, reasoning, code)


def _usage(raw: object) -> tuple[Usage | None, int]:
    """A response body's usage (chat, completions, embeddings, Responses) as the ledger counts it, and reasoning tokens."""
    if not isinstance(raw, dict):
        return None, 0
    try:
        given = msgspec.convert(raw, _UsageIn)
    except msgspec.ValidationError:
        return None, 0
    prompt = given.prompt_tokens or given.input_tokens
    completion = given.completion_tokens or given.output_tokens
    details = given.prompt_tokens_details or given.input_tokens_details
    cached = details.cached_tokens if details is not None else 0
    out_details = given.completion_tokens_details or given.output_tokens_details
    usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    if cached:
        usage.prompt_tokens_details = PromptTokensDetails(cached_tokens=cached)
    return usage, out_details.reasoning_tokens if out_details is not None else 0


def batch_usage(result: NativeResult) -> BatchUsage:
    """A completed request's tokens as a Batch object counts them."""
    usage = result.usage
    if usage is None:
        return BatchUsage()
    return BatchUsage(
        usage.prompt_tokens, InputTokensDetails(usage.cached_tokens), usage.completion_tokens,
        OutputTokensDetails(result.reasoning_tokens), usage.prompt_tokens + usage.completion_tokens,
    )  # fmt: skip


def gateway_status(upstream_status: str) -> str | None:
    """The gateway's status for an upstream batch still running; None once it has ended."""
    return _RUNNING.get(upstream_status)
