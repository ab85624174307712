"""Any OpenAI-compatible HTTP server: OpenAI itself, `vllm serve`, Ollama, TGI.

With ``responses: native`` the upstream also serves the Responses API: kind
``responses`` is posted to its ``/responses`` as it is, and the Response or its
events come back as they are (``serving.openai_responses`` reads them). With
``batches: native`` its Files and Batches APIs take the batches the gateway
passes through (``serving.openai_batches``).

Inference requests (chat, completions, embeddings, Responses) go through one
pooled keep-alive ``serving.h1`` client per deployment; the health probe and
the batch APIs use an aiohttp session. ``serving.http_transport`` opens both
and maps failures and statuses to the gateway's errors. Streams are
relayed a network read at a time: each ``data:`` payload that may carry usage
or an error is peeked at and passed on as the same bytes, and, for a relay
that asks for them, the plain events before it come as one run of the bytes
as they arrived (``serving.sse.iter_chunk_batches``). The client's own
credentials never reach the upstream; the deployment's key does.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from core.errors import GatewayError, UpstreamConnectError, UpstreamError
from serving import h1
from serving.base import (
    Completion,
    EngineRequest,
    EngineSpec,
    JsonObject,
    StreamChunk,
    Usage,
)
from serving.http_transport import ErrorFields, HttpUpstream, open_pool, status_error, trace_headers
from serving.openai_batches import BatchPaths, UpstreamBatches
from serving.openai_responses import response_chunks, response_usage
from serving.sse import UpstreamStreamError, iter_chunk_batches

_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings", "responses": "/responses"}


class _UsagePeek(msgspec.Struct):
    usage: Usage | None = None


class _UpstreamErrorBody(msgspec.Struct):
    message: str = ""
    code: str | int | None = None
    param: str | None = None


class _UpstreamErrorEnvelope(msgspec.Struct):
    error: _UpstreamErrorBody | str | None = None


_usage_decoder = msgspec.json.Decoder(_UsagePeek)
_error_decoder = msgspec.json.Decoder(_UpstreamErrorEnvelope)
_encode = msgspec.json.Encoder().encode


class OpenAIOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Ask the upstream for a usage chunk on every stream (`vllm serve`, OpenAI and
    # Ollama support it); turn off for servers that reject `stream_options`.
    stream_usage: bool = True
    organization: str | None = None
    extra_headers: dict[str, str] = {}
    # `native`: the upstream has the Responses API, and /v1/responses requests it
    # serves are passed through to it; `translated`: they become chat requests.
    responses: Literal["translated", "native"] = "translated"
    # `native`: /v1/batches whose alias plans this deployment first are passed through
    # to the upstream's own Files and Batches APIs; `gateway`: the gateway runs them.
    batches: Literal["gateway", "native"] = "gateway"


class OpenAIEngine(HttpUpstream):
    provider = "openai"

    def __init__(self, spec: EngineSpec) -> None:
        super().__init__(spec)
        options = spec.options if isinstance(spec.options, OpenAIOptions) else OpenAIOptions()
        self.options = options
        self.native_responses = options.responses == "native"
        self._base = (spec.base_url or "https://api.openai.com/v1").rstrip("/")
        self._headers = self._build_headers()
        # The model a Responses body names, where it is not the deployment's (Azure: its deployment name).
        self._responses_model: str | None = None
        self._pool: h1.H1Pool | None = None
        self._heads: dict[str, bytes] = {}
        self.batch_api: UpstreamBatches | None = None
        if options.batches == "native":
            paths = BatchPaths(self._base)
            self.batch_api = UpstreamBatches(self.name, spec.model, paths, self._require_session, lambda: self._headers)

    def _build_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        headers.update(self.options.extra_headers)
        if self.spec.api_key:
            headers["authorization"] = f"Bearer {self.spec.api_key}"
        if self.options.organization:
            headers["openai-organization"] = self.options.organization
        return headers

    def url_for(self, kind: str) -> str:
        return self._base + _PATHS[kind]

    def models_url(self) -> str:
        """What the health probe asks: the model list every OpenAI-compatible server has."""
        return self._base + "/models"

    async def start(self) -> None:
        await super().start()
        if self._pool is None:
            self._pool = open_pool(self.spec, self.url_for("chat"))
            self._heads = {}

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await super().close()

    def _send(self, request: EngineRequest, body: bytes) -> Awaitable[h1.Response]:
        """Post ``body`` for ``request``'s kind, with the deployment's headers and the request's trace context."""
        pool = self._pool
        if pool is None:
            raise UpstreamConnectError(f"deployment {self.name} is not started")
        head = self._heads.get(request.kind)
        if head is None:
            url = urlsplit(self.url_for(request.kind))
            target = url.path + (f"?{url.query}" if url.query else "")
            head = self._heads[request.kind] = pool.head(b"POST", target, self._headers)
        return pool.request(head, body, trace_headers(request))

    async def generate(self, request: EngineRequest) -> Completion:
        return await self._unary(request)

    async def embed(self, request: EngineRequest) -> Completion:
        return await self._unary(request)

    async def _unary(self, request: EngineRequest) -> Completion:
        self._running += 1
        try:
            resp = await self._send(request, _encode(self._body(request)))
            data = await resp.read()
            if resp.status != 200:
                raise self._status_error(resp.status, data, resp.headers.get("retry-after"))
        except (TimeoutError, h1.H1Error) as exc:
            raise self._transport_error(exc) from None
        finally:
            self._running -= 1
        try:
            usage = response_usage(data) if request.kind == "responses" else _usage_decoder.decode(data).usage
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise UpstreamError(f"deployment {self.name} returned a body that is not an OpenAI response") from None
        return Completion(body=data, usage=usage)

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamChunk]:
        batches = self.stream_batches(request)
        try:
            async for batch in batches:
                for chunk in batch:
                    yield chunk
        finally:
            await batches.aclose()

    async def stream_batches(self, request: EngineRequest, *, framed: bool = False) -> AsyncGenerator[list[StreamChunk], None]:
        """The stream a network read at a time: each read's chunks in one list, never empty, the last marked ``batch_end``.

        The relay takes them a list at a time (``serving.base.stream_batches``):
        one step of this generator per read rather than one per chunk. With
        ``framed``, a read's plain events come as they arrived
        (``serving.sse.iter_chunk_batches``).
        """
        body = self._stream_body(request)
        self._running += 1
        resp: h1.Response | None = None
        try:
            resp = await self._send(request, _encode(body))
            if resp.status != 200:
                raise self._status_error(resp.status, await resp.read(), resp.headers.get("retry-after"))
            if request.kind == "responses":
                async for chunk in response_chunks(resp.chunks()):
                    yield [chunk]
                return
            async for batch in iter_chunk_batches(resp.chunks(), framed=framed):
                yield batch
        except UpstreamStreamError as exc:
            raise UpstreamError(f"deployment {self.name} failed mid-stream: {exc.message}") from None
        except EOFError:
            raise UpstreamError(f"deployment {self.name} closed the stream early") from None
        except (TimeoutError, h1.H1Error) as exc:
            raise self._transport_error(exc) from None
        finally:
            self._running -= 1
            if resp is not None:
                resp.release()  # a stream left before its end closes the connection: the upstream stops

    def _body(self, request: EngineRequest) -> JsonObject:
        if request.kind == "responses" and self._responses_model is not None:
            return {**request.body, "model": self._responses_model}
        return request.body

    def _stream_body(self, request: EngineRequest) -> JsonObject:
        body = self._body(request)
        if request.kind == "responses":
            return {**body, "stream": True}  # a Responses stream always ends with its usage
        if not self.options.stream_usage:
            return body
        options = body.get("stream_options")
        merged = dict(options) if isinstance(options, dict) else {}
        merged["include_usage"] = True
        return {**body, "stream": True, "stream_options": merged}

    async def abort(self, request_id: str) -> None:
        # HTTP requests are aborted by closing the response, which the stream's
        # consumer does by closing the generator.
        return None

    def _status_error(self, status: int, data: bytes, retry_after: str | None) -> GatewayError:
        return status_error(self.name, status, _upstream_error_fields(data), retry_after)


def _upstream_error_fields(data: bytes) -> ErrorFields:
    try:
        envelope = _error_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return ErrorFields()
    err = envelope.error
    if isinstance(err, str):
        return ErrorFields(message=err[:500])
    if err is None:
        return ErrorFields()
    code = str(err.code) if err.code is not None else None
    return ErrorFields(message=err.message[:500], code=code, param=err.param)
