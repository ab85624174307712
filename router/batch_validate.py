"""A batch's input file: its JSONL lines, each checked the way OpenAI's Batch API checks them.

Each line is ``{"custom_id", "method": "POST", "url": <the batch's endpoint>,
"body": {...}}``; custom ids are unique, the body is what the endpoint itself
would accept (the same decoding as the HTTP route), never streamed, and names
a model the tenant may use. A bad file fails the batch with errors that name
their line numbers (1-based, counting blank lines, which are skipped).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from core.config import RoutingPolicy
from core.errors import GatewayError, InvalidRequest
from policies.routing import Router
from router.batch_records import BatchError
from router.decode import decode_body, too_deep
from router.wire import ChatRequest, CompletionRequest, EmbeddingRequest
from router.wire import Request as WireRequest
from serving.base import Kind

ENDPOINTS: dict[str, tuple[Kind, type[WireRequest]]] = {
    "/v1/chat/completions": ("chat", ChatRequest),
    "/v1/completions": ("completion", CompletionRequest),
    "/v1/embeddings": ("embedding", EmbeddingRequest),
}
# Errors kept on a failed batch; a file with more says how many more.
MAX_ERRORS = 100


class _Line(msgspec.Struct):
    custom_id: str | None = None
    method: str | None = None
    url: str | None = None
    body: msgspec.Raw = msgspec.Raw()


_line_decoder = msgspec.json.Decoder(_Line)


@dataclass(slots=True, frozen=True)
class BatchLine:
    number: int
    custom_id: str
    body: dict[str, Any]

    @property
    def model(self) -> str:
        model: str = self.body["model"]  # decode_body made sure of it
        return model


class LineError(Exception):
    def __init__(self, error: BatchError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class Validation:
    total: int
    errors: list[BatchError]
    # The alias every line names; None when they name several.
    model: str | None = None


def _refuse(number: int, code: str, message: str, param: str | None = None) -> LineError:
    return LineError(BatchError(code=code, message=message, param=param, line=number))


def parse_line(number: int, raw: bytes, endpoint: str) -> BatchLine:
    """One line as a request of the batch's endpoint, or ``LineError``."""
    try:
        line = _line_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        text, sep, where = str(exc).rpartition(" - at ")
        param = where.strip("`").removeprefix("$").removeprefix(".") or None if sep else None
        raise _refuse(number, "invalid_request", f"{text if sep else exc}.", param) from None
    except msgspec.DecodeError:
        raise _refuse(number, "invalid_json_line", "This line is not a valid JSON object.") from None
    except RecursionError:
        raise _refuse(number, "invalid_json", too_deep().message) from None
    if not line.custom_id:
        raise _refuse(number, "missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id")
    if line.method != "POST":
        raise _refuse(number, "invalid_method", "The method must be 'POST'.", "method")
    if line.url != endpoint:
        raise _refuse(number, "invalid_url", f"The url must be the batch's endpoint, '{endpoint}'.", "url")
    if not line.body:
        raise _refuse(number, "missing_required_parameter", "Missing required parameter: 'body'.", "body")
    shape = ENDPOINTS[endpoint][1]
    try:
        body, validated, _ = decode_body(bytes(line.body), shape)
    except InvalidRequest as exc:
        param = f"body.{exc.param}" if exc.param else "body"
        raise _refuse(number, exc.code or "invalid_request", exc.message, param) from None
    if getattr(validated, "stream", False):
        raise _refuse(number, "invalid_value", "Requests of a batch cannot be streamed.", "body.stream")
    return BatchLine(number, line.custom_id, body)


async def numbered_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """(line number, line) for every line that is not blank, from a file read in chunks."""
    number = 0
    rest = b""
    async for chunk in chunks:
        *complete, rest = (rest + chunk).split(b"\n")
        for line in complete:
            number += 1
            if line.strip():
                yield number, line
    if rest.strip():
        yield number + 1, rest


async def validate(chunks: AsyncIterable[bytes], endpoint: str, router: Router, policy: RoutingPolicy, max_requests: int) -> Validation:
    """Every line of the file checked; the number of requests and the errors found (at most ``MAX_ERRORS``)."""
    seen: set[str] = set()
    models: set[str] = set()
    errors: list[BatchError] = []
    total = bad = 0
    async for number, raw in numbered_lines(chunks):
        total += 1
        if total > max_requests:
            errors.append(BatchError(code="too_many_requests", message=f"A batch holds at most {max_requests} requests.", line=number))
            break
        if total % 500 == 0:
            await asyncio.sleep(0)  # a long file is checked between requests, not instead of them
        try:
            line = parse_line(number, raw, endpoint)
            if line.custom_id in seen:
                raise _refuse(number, "duplicate_custom_id", "The custom_id of this line is already used by an earlier line.", "custom_id")
            seen.add(line.custom_id)
            models.add(line.model)
            try:
                router.get(line.model, policy)
            except GatewayError as exc:
                raise _refuse(number, "model_not_found", exc.message, "body.model") from None
        except LineError as exc:
            bad += 1
            if len(errors) < MAX_ERRORS:
                errors.append(exc.error)
    if bad > MAX_ERRORS:
        errors.append(BatchError(code="too_many_errors", message=f"{bad - MAX_ERRORS} more lines have errors."))
    if total == 0:
        errors.append(BatchError(code="empty_file", message="The input file holds no requests."))
    return Validation(total, errors, next(iter(models)) if len(models) == 1 else None)
