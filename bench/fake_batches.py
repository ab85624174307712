"""The fake upstream's Files and Batches APIs: what a gateway passing batches through talks to.

``POST /v1/files`` (multipart, purpose ``batch``), ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``,
and Azure's twins under ``/openai/`` (``?api-version=``). Each call is recorded
with the other requests (``GET /_fake/requests``); an upload is recorded with
its JSONL lines parsed, as ``{"purpose", "lines"}``, so a test sees what the
upstream was sent.

A batch is ``validating`` when created, ``in_progress`` once read, and
completes on the first read ``x-fake-batch-delay-ms`` (default 500) after it
was created: every line is answered as the chat, completions or embeddings
endpoint would answer it (``bench.fake_replies``; a prompt
``fake-behavior:error_400`` makes that line a 400 in the error file). A
cancel makes it ``cancelling``, then ``cancelled`` at the next read, with no
results. The server-wide override (``POST /_fake/behavior``) makes these
endpoints fail too: ``error_503`` is an outage while it lasts.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

from bench import fake_replies as replies
from bench.fake_replies import JsonObject

DEFAULT_BATCH_DELAY_MS = 500
_ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/chat/completions", "/completions", "/embeddings"})


def _json(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(payload), status=status, content_type="application/json")


def _not_found(what: str) -> web.Response:
    return _json(replies.error_detail(f"No such {what}.", "invalid_request_error", "not_found"), 404)


def _invalid(message: str) -> web.Response:
    return _json(replies.error_detail(message, "invalid_request_error", "invalid_request"), 400)


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    created: float
    delay_s: float
    metadata: dict[str, str] | None
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})

    def object(self) -> JsonObject:
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint, "errors": None, "input_file_id": self.input_file_id,
            "completion_window": "24h", "status": self.status, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": int(self.created), "request_counts": dict(self.counts),
            "metadata": self.metadata,
        }  # fmt: skip


class FakeBatches:
    """Files and batches kept in memory; ``record`` is the server's request recorder."""

    def __init__(self, record: Any, override: Any) -> None:
        self._record = record
        self._override = override  # () -> the server-wide behaviour override, or None
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)

    def _failing(self) -> web.Response | None:
        behavior = self._override()
        if behavior in replies.ERROR_BEHAVIORS:
            status, payload = replies.error_body(behavior)
            return _json(payload, status)
        return None

    async def upload(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        content = upload.file.read() if isinstance(upload, web.FileField) else b""
        lines = [msgspec.json.decode(line) for line in content.splitlines() if line.strip()]
        self._record(request, {"purpose": purpose, "lines": lines})
        failing = self._failing()
        if failing is not None:
            return failing
        if purpose != "batch" or not content:
            return _invalid("A file with purpose 'batch' is required.")
        file_id = f"file-fake{next(self._ids)}"
        self.files[file_id] = content
        return _json({"id": file_id, "object": "file", "bytes": len(content), "purpose": "batch", "created_at": int(time.time())})

    async def content(self, request: web.Request) -> web.StreamResponse:
        self._record(request, None)
        failing = self._failing()
        if failing is not None:
            return failing
        content = self.files.get(request.match_info["file_id"])
        if content is None:
            return _not_found("file")
        return web.Response(body=content, content_type="application/octet-stream")

    async def create(self, request: web.Request) -> web.StreamResponse:
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            body = None
        self._record(request, body)
        failing = self._failing()
        if failing is not None:
            return failing
        if not isinstance(body, dict) or body.get("input_file_id") not in self.files:
            return _invalid("'input_file_id' must name an uploaded file.")
        if body.get("endpoint") not in _ENDPOINTS or body.get("completion_window") != "24h":
            return _invalid("Unsupported endpoint or completion window.")
        delay_ms = request.headers.get("x-fake-batch-delay-ms", "")
        delay_s = int(delay_ms) / 1000 if delay_ms.isdigit() else DEFAULT_BATCH_DELAY_MS / 1000
        batch = _Batch(f"batch_fake{next(self._ids)}", body["input_file_id"], body["endpoint"], time.time(), delay_s, body.get("metadata"))
        self.batches[batch.id] = batch
        return _json(batch.object())

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        self._record(request, None)
        failing = self._failing()
        if failing is not None:
            return failing
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _not_found("batch")
        self._advance(batch)
        return _json(batch.object())

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        self._record(request, None)
        failing = self._failing()
        if failing is not None:
            return failing
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _not_found("batch")
        if batch.status in ("validating", "in_progress"):
            batch.status = "cancelling"
        return _json(batch.object())

    def _advance(self, batch: _Batch) -> None:
        if batch.status == "cancelling":
            batch.status = "cancelled"
        elif batch.status == "validating":
            batch.status = "in_progress"
        elif batch.status == "in_progress" and time.time() - batch.created >= batch.delay_s:
            self._complete(batch)

    def _complete(self, batch: _Batch) -> None:
        output, errors = [], []
        for raw in self.files[batch.input_file_id].splitlines():
            if not raw.strip():
                continue
            line = msgspec.json.decode(raw)
            status, payload = answer(line.get("url", ""), line.get("body") or {}, next(self._ids))
            n = next(self._ids)
            result = {"id": f"batch_req_fake{n}", "custom_id": line.get("custom_id"), "error": None,
                      "response": {"status_code": status, "request_id": f"req_fake{n}", "body": payload}}  # fmt: skip
            (output if status == 200 else errors).append(msgspec.json.encode(result))
        for lines, attr in ((output, "output_file_id"), (errors, "error_file_id")):
            if lines:
                file_id = f"file-fake{next(self._ids)}"
                self.files[file_id] = b"\n".join(lines) + b"\n"
                setattr(batch, attr, file_id)
        batch.counts = {"total": len(output) + len(errors), "completed": len(output), "failed": len(errors)}
        batch.status = "completed"


def answer(url: str, body: JsonObject, n: int) -> tuple[int, JsonObject]:
    """One line's response, as the fake's own endpoint for ``url`` answers it (not streamed)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return 400, replies.error_detail("'model' is required.", "invalid_request_error")
    behavior = replies.behavior_of(model, None, body)
    if behavior in replies.ERROR_BEHAVIORS:
        return replies.error_body(behavior)
    created = int(time.time())
    if url.endswith("/embeddings"):
        return 200, replies.embeddings_body(body, model)
    words = replies.DEFAULT_CHUNKS
    reply = replies.structured_reply(body, words) or replies.plan_reply(body, words)
    if url.endswith("/chat/completions"):
        call = replies.tool_call(body)
        payload = replies.chat_body(
            {"id": f"chatcmpl-fake{n}", "object": "chat.completion", "created": created, "model": model}, reply, call
        )
        payload["usage"] = replies.usage(replies.chat_prompt_tokens(body.get("messages")), replies.completion_tokens(reply, call))
        return 200, payload
    payload = replies.completion_body({"id": f"cmpl-fake{n}", "object": "text_completion", "created": created, "model": model}, reply)
    payload["usage"] = replies.usage(replies.completion_prompt_tokens(body.get("prompt")), reply.completion_tokens)
    return 200, payload


def add_routes(app: web.Application, batches: FakeBatches) -> None:
    for root in ("/v1", "/openai"):
        app.router.add_post(f"{root}/files", batches.upload)
        app.router.add_get(f"{root}/files/{{file_id}}/content", batches.content)
        app.router.add_post(f"{root}/batches", batches.create)
        app.router.add_get(f"{root}/batches/{{batch_id}}", batches.retrieve)
        app.router.add_post(f"{root}/batches/{{batch_id}}/cancel", batches.cancel)
