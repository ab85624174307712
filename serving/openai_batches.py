"""An OpenAI-compatible upstream's own Files and Batches APIs, for batches passed through to it.

A deployment with ``batches: native`` (``openai``, ``openai_compatible``,
``azure``) has one of these as its engine's ``batch_api``. It uploads an input
file (purpose ``batch``), creates, reads and cancels a batch, and downloads a
result file, over the engine's pooled session and with the deployment's own
credentials (never a client's). OpenAI's paths sit under the base URL
(``/files``, ``/batches``) and a line's ``url`` keeps its ``/v1``; Azure's are
``/openai/files`` and ``/openai/batches`` with ``api-version``, and a line's
``url`` (and the batch's endpoint) drops the ``/v1``.

Failures map as every upstream call's do (``serving.http_transport``), but for
a 4xx (other than 408 and 429, which are worth retrying): that is
``UpstreamRejected`` with the upstream's status, its message left out (it may
quote the request), so a create the upstream refuses fails the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
import msgspec

from core.errors import GatewayError, UpstreamError, UpstreamRejected
from serving.http_transport import ErrorFields, status_error, transport_error

# Statuses of a 4xx that say "later", not "never".
_RETRY_LATER = frozenset({408, 429})


class UpstreamCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class UpstreamBatchError(msgspec.Struct):
    code: str | None = None
    line: int | None = None


class UpstreamBatchErrors(msgspec.Struct):
    data: list[UpstreamBatchError] = []


class UpstreamBatch(msgspec.Struct):
    """What the gateway reads of the upstream's Batch object."""

    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: UpstreamCounts | None = None
    errors: UpstreamBatchErrors | None = None


class _Uploaded(msgspec.Struct):
    id: str


class _ErrorBody(msgspec.Struct):
    code: str | int | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorBody | str | None = None


_batch_decoder = msgspec.json.Decoder(UpstreamBatch)
_uploaded_decoder = msgspec.json.Decoder(_Uploaded)
_error_decoder = msgspec.json.Decoder(_ErrorEnvelope)
_encode = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class BatchPaths:
    """Where the upstream's Files and Batches APIs are: ``root`` + path + ``query``."""

    root: str
    query: str = ""
    # What a line's url and the batch's endpoint start with: "/v1" for OpenAI, "" for Azure.
    endpoint_prefix: str = "/v1"

    def url(self, path: str) -> str:
        return f"{self.root}{path}{self.query}"


class UpstreamBatches:
    """The upstream's Files and Batches APIs, as the deployment named ``name`` reaches them."""

    def __init__(
        self, name: str, model: str, paths: BatchPaths, session: Callable[[], aiohttp.ClientSession], headers: Callable[[], dict[str, str]]
    ) -> None:
        self.name = name
        # What a line's `model` becomes upstream (Azure: the deployment name).
        self.model = model
        self.paths = paths
        self._session = session
        self._headers = headers

    def endpoint(self, gateway_endpoint: str) -> str:
        """A gateway endpoint (``/v1/chat/completions``) as the upstream names it."""
        return self.paths.endpoint_prefix + gateway_endpoint.removeprefix("/v1")

    def _json_headers(self) -> dict[str, str]:
        return {**self._headers(), "content-type": "application/json", "accept": "application/json"}

    async def upload(self, content: bytes, filename: str) -> str:
        """Upload a batch input file; its upstream id."""
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename=filename, content_type="application/jsonl")
        headers = {k: v for k, v in self._headers().items() if k.lower() != "content-type"}
        data = await self._call("POST", self.paths.url("/files"), headers, form)
        try:
            return _uploaded_decoder.decode(data).id
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise UpstreamError(f"deployment {self.name} answered an upload with something other than a file") from None

    async def create(self, input_file_id: str, endpoint: str, metadata: dict[str, str]) -> UpstreamBatch:
        body = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": "24h", "metadata": metadata}
        return self._batch(await self._call("POST", self.paths.url("/batches"), self._json_headers(), _encode(body)))

    async def retrieve(self, batch_id: str) -> UpstreamBatch:
        return self._batch(await self._call("GET", self.paths.url(f"/batches/{quote(batch_id, safe='')}"), self._json_headers(), None))

    async def cancel(self, batch_id: str) -> UpstreamBatch:
        return self._batch(
            await self._call("POST", self.paths.url(f"/batches/{quote(batch_id, safe='')}/cancel"), self._json_headers(), None)
        )

    async def content(self, file_id: str) -> bytes:
        """A result file's bytes."""
        headers = {k: v for k, v in self._headers().items() if k.lower() != "content-type"}
        return await self._call("GET", self.paths.url(f"/files/{quote(file_id, safe='')}/content"), headers, None)

    def _batch(self, data: bytes) -> UpstreamBatch:
        try:
            return _batch_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise UpstreamError(f"deployment {self.name} answered with something other than a batch") from None

    async def _call(self, method: str, url: str, headers: dict[str, str], data: bytes | aiohttp.FormData | None) -> bytes:
        try:
            async with self._session().request(method, url, headers=headers, data=data, allow_redirects=False) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise self._status_error(resp.status, body, resp.headers.get("retry-after"))
                return body
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc, self.name) from None

    def _status_error(self, status: int, body: bytes, retry_after: str | None) -> GatewayError:
        code = _error_code(body)
        if 400 <= status < 500 and status not in _RETRY_LATER:
            # The upstream's message may quote the request: its status and code only.
            return UpstreamRejected(f"deployment {self.name} answered {status}", status=status, code=code or "upstream_rejected")
        return status_error(self.name, status, ErrorFields(code=code), retry_after)


def _error_code(body: bytes) -> str | None:
    try:
        error = _error_decoder.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if isinstance(error, _ErrorBody) and error.code is not None:
        return str(error.code)[:100]
    return None


def batch_api(engine: object) -> UpstreamBatches | None:
    """The upstream batch API of ``engine``: set when its deployment says ``batches: native``."""
    api = getattr(engine, "batch_api", None)
    return api if isinstance(api, UpstreamBatches) else None
