"""Any OpenAI-compatible HTTP server: OpenAI itself, `vllm serve`, Ollama, TGI.

One pooled keep-alive aiohttp session per deployment. Streams are relayed chunk
by chunk: each ``data:`` payload is peeked at (usage, text, errors) and passed on
as the same bytes. The client's own credentials never reach the upstream; the
deployment's key does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from router.errors import (
    GatewayError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from serving.base import Completion, EngineRequest, EngineSpec, JsonObject, Load, StreamChunk, Usage
from serving.sse import UpstreamStreamError, iter_sse_batches, peek_chunk

_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}


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


class OpenAIEngine:
    provider = "openai"

    def __init__(self, spec: EngineSpec) -> None:
        self.name = spec.name
        self.spec = spec
        options = spec.options if isinstance(spec.options, OpenAIOptions) else OpenAIOptions()
        self.options = options
        self._base = (spec.base_url or "https://api.openai.com/v1").rstrip("/")
        self._headers = self._build_headers()
        self._session: aiohttp.ClientSession | None = None
        self._running = 0
        self._consecutive_failures = 0

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

    async def start(self) -> None:
        if self._session is not None:
            return
        t = self.spec.timeouts
        connector = aiohttp.TCPConnector(
            limit=self.spec.max_connections, ttl_dns_cache=300, keepalive_timeout=60, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=t.total_s, connect=t.connect_s, sock_read=t.read_s),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def generate(self, request: EngineRequest) -> Completion:
        return await self._unary(request)

    async def embed(self, request: EngineRequest) -> Completion:
        return await self._unary(request)

    async def _unary(self, request: EngineRequest) -> Completion:
        session = self._require_session()
        self._running += 1
        try:
            async with session.post(self.url_for(request.kind), data=_encode(request.body), headers=self._headers) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise self._status_error(resp.status, data, resp.headers.get("retry-after"))
        except GatewayError:
            self._consecutive_failures += 1
            raise
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            self._consecutive_failures += 1
            raise self._transport_error(exc) from None
        finally:
            self._running -= 1
        self._consecutive_failures = 0
        try:
            usage = _usage_decoder.decode(data).usage
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise UpstreamError(f"deployment {self.name} returned a body that is not an OpenAI response") from None
        return Completion(body=data, usage=usage)

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamChunk]:
        session = self._require_session()
        body = self._stream_body(request.body)
        self._running += 1
        try:
            async with session.post(self.url_for(request.kind), data=_encode(body), headers=self._headers) as resp:
                if resp.status != 200:
                    raise self._status_error(resp.status, await resp.read(), resp.headers.get("retry-after"))
                async for batch in iter_sse_batches(resp.content.iter_any()):
                    last = len(batch) - 1
                    for i, payload in enumerate(batch):
                        chunk = peek_chunk(payload)
                        chunk.batch_end = i == last
                        yield chunk
        except GatewayError:
            self._consecutive_failures += 1
            raise
        except UpstreamStreamError as exc:
            self._consecutive_failures += 1
            raise UpstreamError(f"deployment {self.name} failed mid-stream: {exc.message}") from None
        except EOFError:
            self._consecutive_failures += 1
            raise UpstreamError(f"deployment {self.name} closed the stream early") from None
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            self._consecutive_failures += 1
            raise self._transport_error(exc) from None
        finally:
            self._running -= 1
        self._consecutive_failures = 0

    def _stream_body(self, body: JsonObject) -> JsonObject:
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

    async def health(self) -> bool:
        return self._session is not None and self._consecutive_failures < 5

    def load(self) -> Load:
        return Load(running=self._running)

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise UpstreamConnectError(f"deployment {self.name} is not started")
        return self._session

    def _status_error(self, status: int, data: bytes, retry_after: str | None) -> GatewayError:
        message, code, param = _upstream_error_fields(data)
        where = f"deployment {self.name} answered {status}"
        if status == 429:
            return UpstreamRateLimited(f"{where}: rate limited", retry_after=_parse_retry_after(retry_after))
        if status in (401, 403):
            # The gateway's credentials were refused: not the client's fault.
            return UpstreamError(f"{where}: the gateway's credentials were refused")
        if status == 408:
            return UpstreamTimeout(f"{where}: request timeout")
        if 400 <= status < 500:
            return UpstreamRejected(message or f"{where}", status=status, param=param, code=code)
        return UpstreamError(f"{where}{': ' + message if message else ''}", retry_after=_parse_retry_after(retry_after))

    def _transport_error(self, exc: BaseException) -> GatewayError:
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return UpstreamTimeout(f"deployment {self.name} timed out")
        if isinstance(exc, aiohttp.ClientConnectionError) and not isinstance(exc, aiohttp.ServerDisconnectedError):
            if isinstance(exc, aiohttp.ClientConnectorError):
                return UpstreamConnectError(f"deployment {self.name} is unreachable")
        return UpstreamError(f"deployment {self.name} failed: {type(exc).__name__}")


def _upstream_error_fields(data: bytes) -> tuple[str, str | None, str | None]:
    try:
        envelope = _error_decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return "", None, None
    err = envelope.error
    if isinstance(err, str):
        return err[:500], None, None
    if err is None:
        return "", None, None
    code = str(err.code) if err.code is not None else None
    return err.message[:500], code, err.param


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
