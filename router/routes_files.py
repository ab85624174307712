"""The Files API (``/v1/files``): upload, list, retrieve, download and delete a tenant's files.

A tenant sees only its own files: another tenant's id answers the same 404 as
an id that never existed. Uploads are ``multipart/form-data`` (``file`` and
``purpose``, optionally ``expires_after[anchor]`` / ``expires_after[seconds]``),
at most ``batches.max_file_bytes`` of file (413 beyond), streamed to the store
through a temporary file, never held in memory whole.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.datastructures import FormMultiDict, UploadFile
from litestar.response import Stream
from litestar.types import ReceiveMessage

from core.errors import InvalidRequest, PayloadTooLarge
from router.batch_http import caller, json_answer, limit_param, page
from router.body import DRAIN_BYTES, ClientGone
from router.files_store import UPLOAD_PURPOSES, file_not_found
from router.files_store_local import CHUNK_BYTES

# Room for the multipart framing and the small fields beside the file.
_FORM_OVERHEAD = 64 * 1024
_MIN_EXPIRY_S, _MAX_EXPIRY_S = 3600, 30 * 24 * 3600
_MAX_LIST = 10_000


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The file is larger than the limit of {limit} bytes.", param="file")


async def _form(request: Request[Any, Any, Any], limit: int) -> FormMultiDict:
    """The form, read through a receive that stops at ``limit`` bytes (the route itself sets no body limit)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequest("Expected a multipart/form-data body with `file` and `purpose`.", code="invalid_content_type")
    received = 0
    receive = request.receive

    async def drain(seen: int) -> None:
        # Answering while the client still sends makes many clients see a reset instead of the 413.
        while seen <= DRAIN_BYTES:
            event = await receive()
            if event["type"] != "http.request":
                return
            seen += len(event.get("body", b""))
            if not event.get("more_body", False):
                return

    async def limited() -> ReceiveMessage:
        nonlocal received
        event = await receive()
        if event["type"] != "http.request":
            raise ClientGone("The client closed the connection before sending the whole body.")
        received += len(event.get("body", b""))
        if received > limit:
            if event.get("more_body", False):
                await drain(received)
            raise _too_large(limit - _FORM_OVERHEAD)
        return event

    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        if request.headers.get("expect", "").lower() != "100-continue":
            await drain(0)
        raise _too_large(limit - _FORM_OVERHEAD)
    try:
        return await Request[Any, Any, Any](request.scope, receive=limited).form()
    except (UnicodeError, LookupError):
        # The framework decodes text fields by the charset each part declares.
        raise InvalidRequest("A form field is not text in the charset it declares.", code="invalid_form") from None


async def _chunks(upload: UploadFile, limit: int) -> AsyncIterator[bytes]:
    size = 0
    while chunk := await upload.read(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        yield chunk


def _filename(upload: UploadFile) -> str:
    # Metadata only (never a path on disk): the last path segment, printable, bounded.
    name = upload.filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:255]
    return name or "upload"


def _expires_at(form: FormMultiDict, now: int) -> int | None:
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("`expires_after[anchor]` must be 'created_at'.", param="expires_after.anchor", code="invalid_value")
    if not isinstance(seconds, str) or not seconds.isdigit() or not _MIN_EXPIRY_S <= int(seconds) <= _MAX_EXPIRY_S:
        raise InvalidRequest(
            f"`expires_after[seconds]` must be an integer from {_MIN_EXPIRY_S} to {_MAX_EXPIRY_S}.", param="expires_after.seconds",
            code="invalid_value",
        )  # fmt: skip
    return now + int(seconds)


@post("/v1/files", status_code=200, request_max_body_size=None)
async def create_file(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway, principal = await caller(request)
    limit = gateway.base.batches.max_file_bytes
    form = await _form(request, limit + _FORM_OVERHEAD)
    try:
        purpose, upload = form.get("purpose"), form.get("file")
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            allowed = ", ".join(sorted(UPLOAD_PURPOSES))
            raise InvalidRequest(f"`purpose` must be one of: {allowed}.", param="purpose", code="invalid_value")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest(
                "Missing required parameter: 'file' (a file part of the form).", param="file", code="missing_required_parameter"
            )
        expires_at = _expires_at(form, int(time.time()))
        created = await gateway.files.create(
            principal.tenant, filename=_filename(upload), purpose=purpose, content=_chunks(upload, limit), expires_at=expires_at
        )
    finally:
        await form.close()
    return json_answer(created)


@get("/v1/files")
async def list_files(request: Request[Any, Any, Any]) -> Response[bytes]:
    gateway, principal = await caller(request)
    params = request.query_params
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("`order` must be 'asc' or 'desc'.", param="order", code="invalid_value")
    files, more = await gateway.files.page(
        principal.tenant, purpose=params.get("purpose"), after=params.get("after"), limit=limit_param(request, _MAX_LIST, _MAX_LIST),
        order="asc" if order == "asc" else "desc",
    )  # fmt: skip
    return page(files, [f.id for f in files], more)


@get("/v1/files/{file_id:str}")
async def retrieve_file(request: Request[Any, Any, Any], file_id: str) -> Response[bytes]:
    gateway, principal = await caller(request)
    found = await gateway.files.get(principal.tenant, file_id)
    if found is None:
        raise file_not_found(file_id)
    return json_answer(found)


@get("/v1/files/{file_id:str}/content")
async def file_content(request: Request[Any, Any, Any], file_id: str) -> Stream:
    gateway, principal = await caller(request)
    found = await gateway.files.get(principal.tenant, file_id)
    if found is None:
        raise file_not_found(file_id)
    return Stream(
        gateway.files.content(principal.tenant, file_id),
        media_type="application/octet-stream",
        headers={"content-length": str(found.bytes)},
    )


@delete("/v1/files/{file_id:str}", status_code=200)
async def delete_file(request: Request[Any, Any, Any], file_id: str) -> Response[bytes]:
    gateway, principal = await caller(request)
    if not await gateway.files.delete(principal.tenant, file_id):
        raise file_not_found(file_id)
    return json_answer({"id": file_id, "object": "file", "deleted": True})


ROUTES = [create_file, list_files, retrieve_file, file_content, delete_file]
