"""A fake Google Gemini: the Gemini API (``/v1beta``) and Vertex AI's publisher models (``/v1``).

Requests are checked against the shapes Google accepts (``tests.fakes.gemini_checks``):
an unknown field, a snake_case name, a role other than user/model, a
functionResponse without a name, a systemInstruction with a role other than
"system" all get Google's 400 ``INVALID_ARGUMENT`` envelope. The Gemini API
wants its key in ``x-goog-api-key`` (a missing one is a 403, a wrong one a 400
with ``ErrorInfo`` reason ``API_KEY_INVALID``, as Google answers; a ``key`` in
the query string is refused outright: the engine must never put it there).
Vertex AI wants ``Authorization: Bearer VERTEX_TOKEN`` and ``PROJECT``/``LOCATION``.

Answers (chosen by the request, then by the model name):

- a prompt containing ``SAFETY_TRIGGER``: ``promptFeedback.blockReason`` SAFETY, no candidates;
  ``OUTPUT_SAFETY_TRIGGER``: a candidate stopped with ``finishReason`` SAFETY and no content.
- tools declared (mode not NONE) and the last turn not a function response: one
  ``functionCall`` of the first allowed function, its args holding the schema's
  required fields (``sample``); Gemini 3 models (``gemini-3*``) sign it with
  ``THOUGHT_SIGNATURE`` and refuse a replayed call without a signature.
- the last turn holds function responses: the text ``TOOL_ANSWER_PREFIX`` + their JSON.
- ``responseJsonSchema``: JSON valid for it (``sample``); ``application/json`` alone: ``{"answer": ...}``.
- otherwise ``REPLY_TEXT``, cut to ``maxOutputTokens`` words (finishReason MAX_TOKENS);
  ``candidateCount`` candidates. Usage is ``USAGE``.
- model ``gemini-status-<code>``: that status with Google's error body (429 also
  sends ``retry-after: 7``); ``gemini-retry-info``: a 429 whose delay is only in
  ``RetryInfo`` (``RETRY_DELAY_S``); ``gemini-slow``: answers after 2 s.
- streams (``:streamGenerateContent?alt=sse``): ``data: {...}`` events, text in
  three pieces, usage totals on the last event; ``gemini-truncated`` stops before
  the finish reason, ``gemini-midstream-error`` sends an error event after text,
  ``gemini-endless`` streams until the client goes away (``disconnects``).
- ``:batchEmbedContents`` (Gemini API) and ``:predict`` (Vertex AI): vectors of
  ``outputDimensionality`` (default ``EMBED_DIMS``) floats; Vertex counts tokens as words.

Every generation or embedding request is recorded in ``requests``; model-list
GETs (the health probe) are counted in ``model_lists``.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from bench.fake_json import sample_json
from tests.fakes.gemini_checks import SKIP_SIGNATURE, WireError, check_batch_embed, check_generate

API_KEY = "test-gemini-key-0123456789"
VERTEX_TOKEN = "ya29.test-vertex-access-token"
PROJECT, LOCATION = "test-project", "us-central1"
REPLY_TEXT = "Hello from the fake Gemini model."
TOOL_ANSWER_PREFIX = "The tool said: "
SAFETY_TRIGGER = "forbidden-topic"
OUTPUT_SAFETY_TRIGGER = "unsafe-output"
THOUGHT_SIGNATURE = "ZmFrZS10aG91Z2h0LXNpZ25hdHVyZQ=="
USAGE = {
    "promptTokenCount": 12,
    "candidatesTokenCount": 6,
    "thoughtsTokenCount": 3,
    "cachedContentTokenCount": 4,
    "totalTokenCount": 21,
}
EMBED_DIMS = 8
RETRY_DELAY_S = 13
_STATUSES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}  # fmt: skip
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


@dataclass
class RecordedRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeGemini:
    requests: list[RecordedRequest] = field(default_factory=list)
    model_lists: int = 0
    disconnects: int = 0
    base_url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post(r"/v1beta/models/{model:[^/:]+}:{method}", self._gemini_api)
        vertex = r"/v1/projects/{project}/locations/{location}/publishers/google/models/{model:[^/:]+}:{method}"
        app.router.add_post(vertex, self._vertex)
        app.router.add_get("/v1beta/models", self._list_models)
        app.router.add_get("/v1/publishers/google/models/{model}", self._get_model)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _list_models(self, request: web.Request) -> web.Response:
        self.model_lists += 1
        refused = _api_key_refused(request)
        return refused or web.json_response({"models": [{"name": "models/gemini-2.5-flash"}]})

    async def _get_model(self, request: web.Request) -> web.Response:
        self.model_lists += 1
        if request.headers.get("authorization") != f"Bearer {VERTEX_TOKEN}":
            return error_response(401, "Request had invalid authentication credentials.", reason="ACCESS_TOKEN_EXPIRED")
        return web.json_response({"name": f"publishers/google/models/{request.match_info['model']}"})

    async def _gemini_api(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        refused = _api_key_refused(request)
        return refused or await self._serve(request, body, vertex=False)

    async def _vertex(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if request.headers.get("authorization") != f"Bearer {VERTEX_TOKEN}":
            return error_response(401, "Request had invalid authentication credentials.", reason="ACCESS_TOKEN_TYPE_UNSUPPORTED")
        if (request.match_info["project"], request.match_info["location"]) != (PROJECT, LOCATION):
            return error_response(404, "Publisher model not found in this project and location.")
        return await self._serve(request, body, vertex=True)

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = None
        self.requests.append(RecordedRequest(request.path, dict(request.query), dict(request.headers), body))
        return body

    async def _serve(self, request: web.Request, body: Any, *, vertex: bool) -> web.StreamResponse:
        model, method = request.match_info["model"], request.match_info["method"]
        if request.content_type != "application/json" or body is None:
            return error_response(400, "Invalid JSON payload received.")
        if model.startswith("gemini-status-"):
            code = int(model.removeprefix("gemini-status-"))
            return error_response(code, f"fake error for {model}", headers={"retry-after": "7"} if code == 429 else None)
        if model == "gemini-retry-info":
            retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{RETRY_DELAY_S}s"}
            return error_response(429, "Resource has been exhausted (e.g. check quota).", details=[retry])
        if model == "gemini-slow":
            await asyncio.sleep(2)
        try:
            if method == "generateContent":
                return web.json_response(self._generate(model, body))
            if method == "streamGenerateContent":
                return await self._stream(request, model, self._generate(model, body))
            if method == "batchEmbedContents" and not vertex:
                texts = check_batch_embed(body, model)
                return web.json_response({"embeddings": [{"values": vector(t, _dims(body["requests"][0]))} for t in texts]})
            if method == "predict" and vertex:
                return web.json_response(_predict(body))
        except WireError as exc:
            return error_response(400, str(exc))
        return error_response(404, f"Method {method} is not found for model {model}.")

    def _generate(self, model: str, body: Any) -> dict[str, Any]:
        check_generate(body, signatures={THOUGHT_SIGNATURE, SKIP_SIGNATURE} if model.startswith("gemini-3") else None)
        prompt = msgspec.json.encode(body["contents"]).decode()
        base = {"modelVersion": model, "responseId": "fake-response-id"}
        if SAFETY_TRIGGER in prompt:
            feedback = {"blockReason": "SAFETY", "safetyRatings": [_rating("HIGH")]}
            return {**base, "promptFeedback": feedback, "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}}
        config = body.get("generationConfig", {})
        count = config.get("candidateCount", 1)
        candidates = [{**_candidate(model, body, prompt), "index": i} for i in range(count)]
        return {**base, "candidates": candidates, "usageMetadata": dict(USAGE)}

    async def _stream(self, request: web.Request, model: str, reply: dict[str, Any]) -> web.StreamResponse:
        if request.query.get("alt") != "sse":
            return web.json_response([reply])  # what Google sends without alt=sse: a JSON array
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        events = stream_events(reply)
        if model in ("gemini-truncated", "gemini-endless"):
            events = events[:-1]
        elif model == "gemini-midstream-error":
            events = [*events[:1], {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}]
        try:
            for event in events:
                await resp.write(b"data: " + msgspec.json.encode(event) + b"\r\n\r\n")
            while model == "gemini-endless":
                await asyncio.sleep(0.01)
                await resp.write(b"data: " + msgspec.json.encode(events[0]) + b"\r\n\r\n")
        except ConnectionResetError:
            self.disconnects += 1
        return resp


def _api_key_refused(request: web.Request) -> web.Response | None:
    if "key" in request.query:
        return error_response(400, "The fake refuses API keys in the URL: send x-goog-api-key.")
    key = request.headers.get("x-goog-api-key")
    if key is None:
        return error_response(403, "Method doesn't allow unregistered callers. Please use an API key.")
    if key != API_KEY:
        return error_response(400, "API key not valid. Please pass a valid API key.", reason="API_KEY_INVALID")
    return None


def error_response(
    code: int, message: str, *, reason: str = "", details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:  # fmt: skip
    details = list(details or [])
    if reason:
        details.append({"@type": _ERROR_INFO, "reason": reason, "domain": "googleapis.com"})
    error: dict[str, Any] = {"code": code, "message": message, "status": _STATUSES.get(code, "UNKNOWN")}
    if details:
        error["details"] = details
    return web.json_response({"error": error}, status=code, headers=headers)


def _candidate(model: str, body: dict[str, Any], prompt: str) -> dict[str, Any]:
    if OUTPUT_SAFETY_TRIGGER in prompt:
        return {"finishReason": "SAFETY", "safetyRatings": [_rating("HIGH")]}
    last = body["contents"][-1]["parts"]
    responses = [p["functionResponse"] for p in last if "functionResponse" in p]
    declarations = [d for tool in body.get("tools", []) for d in tool.get("functionDeclarations", [])]
    calling = body.get("toolConfig", {}).get("functionCallingConfig", {})
    config = body.get("generationConfig", {})
    finish = "STOP"
    if responses:
        parts: list[dict[str, Any]] = [{"text": TOOL_ANSWER_PREFIX + msgspec.json.encode(responses).decode()}]
    elif declarations and calling.get("mode", "AUTO") != "NONE":
        allowed = calling.get("allowedFunctionNames") or [d["name"] for d in declarations]
        chosen = next(d for d in declarations if d["name"] == allowed[0])
        part: dict[str, Any] = {
            "functionCall": {"name": chosen["name"], "args": sample_json(chosen.get("parametersJsonSchema", {"type": "object"}))}
        }
        if model.startswith("gemini-3"):
            part["thoughtSignature"] = THOUGHT_SIGNATURE
        parts = [part]
    elif config.get("responseMimeType") == "application/json":
        schema = config.get("responseJsonSchema")
        parts = [{"text": msgspec.json.encode(sample_json(schema) if schema else {"answer": REPLY_TEXT}).decode()}]
    else:
        words = REPLY_TEXT.split(" ")
        limit = config.get("maxOutputTokens", len(words))
        if limit < len(words):
            words, finish = words[:limit], "MAX_TOKENS"
        parts = [{"text": " ".join(words)}]
    return {"content": {"role": "model", "parts": parts}, "finishReason": finish, "safetyRatings": [_rating("NEGLIGIBLE")]}


def _rating(probability: str) -> dict[str, str]:
    return {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": probability}


def stream_events(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """How Gemini streams ``reply``: text in three pieces, running usage, totals and finish on the last event."""
    base = {k: v for k, v in reply.items() if k in ("modelVersion", "responseId")}
    running = {"promptTokenCount": USAGE["promptTokenCount"], "totalTokenCount": USAGE["promptTokenCount"]}
    if "candidates" not in reply:
        return [reply]
    pieces: list[list[dict[str, Any]]] = [[], [], []]
    for candidate in reply["candidates"]:
        parts = (candidate.get("content") or {}).get("parts", [])
        text = "".join(p.get("text", "") for p in parts if "functionCall" not in p)
        size = max(1, -(-len(text) // 3))
        for k in range(3):
            chunk_parts = [{"text": text[k * size : (k + 1) * size]}] if text[k * size : (k + 1) * size] else []
            if k == 2:
                chunk_parts += [p for p in parts if "functionCall" in p]
            event_candidate: dict[str, Any] = {"content": {"role": "model", "parts": chunk_parts}, "index": candidate["index"]}
            if k == 2:
                event_candidate.update({key: candidate[key] for key in ("finishReason", "safetyRatings") if key in candidate})
            pieces[k].append(event_candidate)
    return [{**base, "candidates": pieces[k], "usageMetadata": reply["usageMetadata"] if k == 2 else running} for k in range(3)]


def vector(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round(digest[i % len(digest)] / 255, 4) for i in range(dims)]


def _dims(request: dict[str, Any]) -> int:
    dims: int = request.get("outputDimensionality", EMBED_DIMS)
    return dims


def _predict(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or set(body) - {"instances", "parameters"}:
        raise WireError("Invalid JSON payload received. predict takes instances and parameters.")
    dims = (body.get("parameters") or {}).get("outputDimensionality", EMBED_DIMS)
    predictions = []
    for instance in body["instances"]:
        if not isinstance(instance, dict) or not isinstance(instance.get("content"), str):
            raise WireError("Invalid value at 'instances': each instance needs a string content")
        statistics = {"token_count": len(instance["content"].split()), "truncated": False}
        predictions.append({"embeddings": {"values": vector(instance["content"], dims), "statistics": statistics}})
    return {"predictions": predictions}
