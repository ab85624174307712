"""Google Gemini behind the OpenAI-speaking Engine interface: the Gemini API, or Vertex AI.

Chat requests are translated to ``generateContent`` (``serving.gemini_translate``)
and replies back to OpenAI chat completions or chunks (``serving.gemini_reply``,
``serving.gemini_stream``); embeddings go through ``serving.gemini_embed``. One
pooled keep-alive aiohttp session per deployment (``serving.http_transport``,
which also maps failures and statuses to the gateway's errors).

The Gemini API takes the deployment's key in ``x-goog-api-key`` (never in the
URL, where proxies and logs would keep it). With ``options.vertex`` the same
calls go to Vertex AI's publisher-model endpoints, and the deployment's key is
sent as the OAuth access token (``Authorization: Bearer``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

import aiohttp
import msgspec

from core.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamUnavailable
from serving.base import Completion, EngineRequest, EngineSpec, JsonObject, StreamChunk
from serving.gemini_embed import batch_embed_request, embedding_inputs, predict_request, to_openai_embeddings
from serving.gemini_errors import google_error
from serving.gemini_reply import max_calls, to_openai_response
from serving.gemini_stream import StreamTranslator
from serving.gemini_translate import to_gemini_request
from serving.http_transport import HttpUpstream, status_error
from serving.sse import iter_sse_data

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
# A model name, or a path such as tunedModels/x: no empty or dot-led segment can
# walk the URL to another endpoint with the deployment's credentials.
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*(/[A-Za-z0-9][A-Za-z0-9._@-]*)?$")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict).decode

GoogleName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]*[a-z0-9]$", max_length=63)]
SafetyName = Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z_]*$")]


class VertexOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    project: GoogleName
    # A region such as us-central1, or "global".
    location: GoogleName


class GeminiOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Set: call Vertex AI in this project and location instead of the Gemini API.
    vertex: VertexOptions | None = None
    # Harm category --> block threshold, sent with every chat request
    # (e.g. HARM_CATEGORY_HARASSMENT: BLOCK_ONLY_HIGH); empty: Google's defaults.
    safety_settings: dict[SafetyName, SafetyName] = {}


class GeminiEngine(HttpUpstream):
    provider = "gemini"

    def __init__(self, spec: EngineSpec) -> None:
        if spec.options is not None and not isinstance(spec.options, GeminiOptions):
            raise TypeError(f"deployment {spec.name}: options must be GeminiOptions")
        super().__init__(spec)
        self.options = spec.options or GeminiOptions()
        self._headers = {"content-type": "application/json"}
        vertex = self.options.vertex
        if vertex is None:
            self._root = _versioned(spec.base_url or DEFAULT_BASE_URL, "/v1beta", ("/v1", "/v1beta"))
            self._models = self._root + "/models"
            if spec.api_key:
                self._headers["x-goog-api-key"] = spec.api_key
        else:
            region = "" if vertex.location == "global" else f"{vertex.location}-"
            host = spec.base_url or f"https://{region}aiplatform.googleapis.com"
            self._root = _versioned(host, "/v1", ("/v1", "/v1beta1"))
            self._models = f"{self._root}/projects/{vertex.project}/locations/{vertex.location}/publishers/google/models"
            if spec.api_key:
                self._headers["authorization"] = f"Bearer {spec.api_key}"
        self._safety = [{"category": c, "threshold": t} for c, t in self.options.safety_settings.items()]
        # request id --> its open upstream response, so abort() can close it.
        self._open: dict[str, aiohttp.ClientResponse] = {}
        self._aborted: set[str] = set()

    def models_url(self) -> str:
        """What the health probe asks: the model list (Gemini API) or the served model (Vertex AI)."""
        if self.options.vertex is None:
            return self._models + "?pageSize=1"
        model = self.spec.model.removeprefix("models/")
        # A health probe never raises: a model name unfit for a URL asks the bare list path.
        return f"{self._root}/publishers/google/models/{quote(model, safe='') if _MODEL.match(model) else ''}"

    def model_url(self, model: str, method: str) -> str:
        name = _model_name(model)
        if self.options.vertex is not None:
            return f"{self._models}/{quote(name.removeprefix('models/'), safe='')}:{method}"
        path = name if "/" in name else f"models/{name}"
        return f"{self._root}/{quote(path, safe='/')}:{method}"

    async def generate(self, request: EngineRequest) -> Completion:
        model, payload = self._chat(request)
        reply = await self._unary(self.model_url(model, "generateContent"), payload, request)
        body, usage = to_openai_response(reply, model=model, max_calls=max_calls(request.body))
        return Completion(body=_encode(body), usage=usage)

    async def embed(self, request: EngineRequest) -> Completion:
        if request.kind != "embedding":
            raise InvalidRequest(f"deployment {self.name}: embed takes embeddings requests", param="model")
        model = _model_name(request.body.get("model") or self.spec.model)
        texts = embedding_inputs(request.body)
        if self.options.vertex is not None:
            url, out = self.model_url(model, "predict"), predict_request(request.body, texts)
        else:
            model_path = model if "/" in model else f"models/{model}"
            url, out = self.model_url(model, "batchEmbedContents"), batch_embed_request(request.body, model_path, texts)
        reply = await self._unary(url, _encode(out), request)
        body, usage = to_openai_embeddings(reply, request.body, texts)
        return Completion(body=_encode(body), usage=usage)

    async def stream(self, request: EngineRequest) -> AsyncIterator[StreamChunk]:
        model, payload = self._chat(request)
        url = self.model_url(model, "streamGenerateContent") + "?alt=sse"
        translator = StreamTranslator(model=model, max_calls=max_calls(request.body))
        resp: aiohttp.ClientResponse | None = None
        whole = False
        self._running += 1
        try:
            resp = await self._send(url, payload, request)
            try:
                async for data in iter_sse_data(resp.content.iter_any()):
                    for chunk in translator.feed(_decode_json(data, self.name)):
                        yield chunk
            except EOFError:
                pass  # Gemini ends a stream by ending the response; no [DONE] comes
            if not translator.done:
                raise UpstreamError(f"deployment {self.name} closed the stream early")
            whole = True
            for chunk in translator.final_chunks():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failed(request.request_id, self._transport_error(exc)) from None
        except GatewayError as exc:
            raise self._failed(request.request_id, exc) from None
        finally:
            self._running -= 1
            self._forget(request.request_id)
            if resp is not None:
                # A whole stream returns its connection to the pool; one the
                # consumer walked away from is cut so Gemini stops generating.
                if whole:
                    resp.release()
                else:
                    resp.close()

    async def abort(self, request_id: str) -> None:
        # Gemini has no cancel call: closing the connection stops generation.
        resp = self._open.pop(request_id, None)
        if resp is not None:
            self._aborted.add(request_id)
            resp.close()

    def _chat(self, request: EngineRequest) -> tuple[str, bytes]:
        """The model name and the generateContent body for a chat request."""
        if request.kind != "chat":
            raise InvalidRequest(f"deployment {self.name} serves chat completions and embeddings only", param="model")
        body: JsonObject = to_gemini_request(request.body)
        if self._safety:
            body["safetySettings"] = self._safety
        return _model_name(request.body["model"]), _encode(body)

    async def _unary(self, url: str, payload: bytes, request: EngineRequest) -> JsonObject:
        request_id = request.request_id
        self._running += 1
        try:
            resp = await self._send(url, payload, request)
            try:
                raw = await resp.read()
            finally:
                resp.release()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._failed(request_id, self._transport_error(exc)) from None
        except GatewayError as exc:
            raise self._failed(request_id, exc) from None
        finally:
            self._running -= 1
            self._forget(request_id)
        return _decode_json(raw, self.name)

    async def _send(self, url: str, payload: bytes, request: EngineRequest) -> aiohttp.ClientResponse:
        """POST one call; returns a 200 response or raises the mapped error."""
        resp = await self._require_session().post(url, data=payload, headers=self._headers_for(request))
        if resp.status == 200:
            self._open[request.request_id] = resp
            return resp
        try:
            raw = await resp.read()
        finally:
            resp.release()
        error = google_error(raw, self.spec.api_key)
        if error.credentials_refused:
            # Google answers a bad API key with 400 INVALID_ARGUMENT: not the client's to fix.
            raise UpstreamUnavailable(f"deployment {self.name} answered {resp.status}: the gateway's credentials were refused")
        retry_after = resp.headers.get("retry-after") or error.retry_delay
        raise status_error(self.name, resp.status, error.fields, retry_after)

    def _forget(self, request_id: str) -> None:
        self._open.pop(request_id, None)
        self._aborted.discard(request_id)

    def _failed(self, request_id: str, exc: GatewayError) -> GatewayError:
        """The error to raise: an aborted request says so, whatever broke when it was cut."""
        if request_id in self._aborted:
            return UpstreamError(f"request to deployment {self.name} was aborted")
        return exc


def _versioned(base: str, version: str, known: tuple[str, ...]) -> str:
    base = base.rstrip("/")
    return base if base.endswith(known) else base + version


def _model_name(model: object) -> str:
    if not isinstance(model, str) or not _MODEL.match(model):
        raise InvalidRequest("the deployment's model name is not a valid Gemini model name", param="model")
    return model


def _decode_json(raw: bytes, name: str) -> JsonObject:
    try:
        decoded: JsonObject = _decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamError(f"deployment {name} sent a body that is not a JSON object") from None
    return decoded
