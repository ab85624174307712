"""Anthropic's Messages API behind the OpenAI-speaking Engine interface.

Requests are translated to Anthropic's shape on the way out and replies back to
OpenAI chat completions (or chunks) on the way in, over one pooled keep-alive
aiohttp session per deployment (``serving.http_transport``, which also maps
failures and statuses to the gateway's errors). The deployment's key goes
upstream; it never appears in an error message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import msgspec

from core.errors import GatewayError, InvalidRequest, UpstreamError
from serving.anthropic_stream import StreamTranslator
from serving.anthropic_translate import to_anthropic_request, to_openai_response
from serving.base import (
    Completion,
    EngineRequest,
    EngineSpec,
    JsonObject,
    StreamChunk,
    Usage,
)
from serving.http_transport import ErrorFields, HttpUpstream, status_error
from serving.sse import iter_sse_data

DEFAULT_BASE_URL = "https://api.anthropic.com"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict).decode


class AnthropicOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    api_version: str = "2023-06-01"
    # Anthropic requires max_tokens; OpenAI clients often leave it out.
    default_max_tokens: int = 4096


class AnthropicEngine(HttpUpstream):
    provider = "anthropic"

    def __init__(self, spec: EngineSpec) -> None:
        if spec.options is not None and not isinstance(spec.options, AnthropicOptions):
            raise TypeError(f"deployment {spec.name}: options must be AnthropicOptions")
        super().__init__(spec)
        self.options = spec.options or AnthropicOptions()
        base = (spec.base_url or DEFAULT_BASE_URL).rstrip("/")
        root = base if base.endswith("/v1") else base + "/v1"
        self._url = root + "/messages"
        self._root = root
        self._headers = {"content-type": "application/json", "anthropic-version": self.options.api_version}
        if spec.api_key:
            self._headers["x-api-key"] = spec.api_key
        # request id --> its open upstream response, so abort() can close it.
        self._open: dict[str, aiohttp.ClientResponse] = {}
        self._aborted: set[str] = set()

    def models_url(self) -> str:
        """What the health probe asks: Anthropic's model list, with the same key."""
        return self._root + "/models"

    async def generate(self, request: EngineRequest) -> Completion:
        payload = self._payload(request, stream=False)
        self._running += 1
        try:
            resp = await self._send(payload, request)
            try:
                raw = await resp.read()
            finally:
                resp.release()
            body, usage = _translate_message(raw, self.name)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failed(request.request_id, self._transport_error(exc)) from None
        except GatewayError as exc:
            raise self._failed(request.request_id, exc) from None
        finally:
            self._running -= 1
            self._open.pop(request.request_id, None)
            self._aborted.discard(request.request_id)
        return Completion(body=_encode(body), usage=usage)

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamChunk]:
        payload = self._payload(request, stream=True)
        translator = StreamTranslator()
        resp: aiohttp.ClientResponse | None = None
        self._running += 1
        try:
            resp = await self._send(payload, request)
            async for data in iter_sse_data(resp.content.iter_any()):
                for chunk in translator.feed(_decode_event(data, self.name)):
                    yield chunk
                if translator.done:
                    break
        except EOFError:
            raise self._failed(request.request_id, UpstreamError(f"deployment {self.name} closed the stream early")) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failed(request.request_id, self._transport_error(exc)) from None
        except GatewayError as exc:
            raise self._failed(request.request_id, exc) from None
        finally:
            self._running -= 1
            self._open.pop(request.request_id, None)
            self._aborted.discard(request.request_id)
            if resp is not None:
                # A finished stream returns its connection to the pool; one the
                # consumer walked away from is cut so Anthropic stops generating.
                if translator.done:
                    resp.release()
                else:
                    resp.close()

    async def embed(self, request: EngineRequest) -> Completion:
        raise InvalidRequest(f"deployment {self.name} is an Anthropic model, which has no embeddings endpoint", param="model")

    async def abort(self, request_id: str) -> None:
        # Anthropic has no cancel call: closing the connection stops generation.
        resp = self._open.pop(request_id, None)
        if resp is not None:
            self._aborted.add(request_id)
            resp.close()

    def _payload(self, request: EngineRequest, *, stream: bool) -> bytes:
        if request.kind != "chat":
            raise InvalidRequest(f"deployment {self.name} serves chat completions only", param="model")
        body: JsonObject = to_anthropic_request(request.body, default_max_tokens=self.options.default_max_tokens)
        if stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
        return _encode(body)

    async def _send(self, payload: bytes, request: EngineRequest) -> aiohttp.ClientResponse:
        """POST to /v1/messages; returns a 200 response or raises the mapped error."""
        resp = await self._require_session().post(self._url, data=payload, headers=self._headers_for(request))
        if resp.status == 200:
            self._open[request.request_id] = resp
            return resp
        try:
            raw = await resp.read()
        finally:
            resp.release()
        raise status_error(self.name, resp.status, _error_fields(raw), resp.headers.get("retry-after"))

    def _failed(self, request_id: str, exc: GatewayError) -> GatewayError:
        """The error to raise: an aborted request says so, whatever broke when it was cut."""
        if request_id in self._aborted:
            return UpstreamError(f"request to deployment {self.name} was aborted")
        return exc


def _translate_message(raw: bytes, name: str) -> tuple[JsonObject, Usage]:
    try:
        return to_openai_response(_decode(raw))
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError, TypeError, AttributeError, ValueError):
        raise UpstreamError(f"deployment {name} returned a body that is not an Anthropic message") from None


def _decode_event(data: bytes, name: str) -> JsonObject:
    try:
        event: JsonObject = _decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamError(f"deployment {name} sent a stream event that is not JSON") from None
    return event


def _error_fields(raw: bytes) -> ErrorFields:
    """Anthropic errors look like {"type": "error", "error": {"type": ..., "message": ...}}."""
    try:
        error = _decode(raw).get("error")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ErrorFields()
    if not isinstance(error, dict):
        return ErrorFields()
    kind = error.get("type")
    message = error.get("message")
    return ErrorFields(message=message[:500] if isinstance(message, str) else "", code=kind if isinstance(kind, str) else None)
