"""A small S3 REST client on aiohttp: the object calls the S3 file store makes, signed with SigV4.

Objects go up whole (``put``) or in parts (``start_upload`` / ``upload_part``
/ ``complete_upload``, or ``abort_upload``), come down streamed (``stream``),
are listed by prefix one page at a time (``list_page``) and deleted. A server
that cannot be reached, stops answering (``timeout_s`` between bytes), or
answers a status the call does not expect is ``FileStoreUnavailable`` (503);
the log line names the call, the status and S3's error code, never a key or
a signature. Idempotent calls are tried again on a connection error or a 5xx.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from router.files_store import FileStoreUnavailable
from router.s3_sigv4 import EMPTY_SHA256, Credentials, canonical_query, sign, uri_encode

log = logging.getLogger("sluicegate.files")
_ATTEMPTS = 3
# Bodies at least this large are hashed off the event loop.
_HASH_ON_THREAD = 256 * 1024
_TRANSPORT = (aiohttp.ClientError, TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class Listing:
    keys: list[str]
    next_token: str | None  # None: the last page


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # S3 answers in its XML namespace


def _texts(root: ET.Element, name: str) -> list[str]:
    return [el.text or "" for el in root.iter() if _local(el.tag) == name]


def _xml(data: bytes) -> ET.Element:
    try:
        return ET.fromstring(data)
    except ET.ParseError:
        return ET.Element("Unparsable")


def _error_code(data: bytes) -> str:
    codes = _texts(_xml(data), "Code") if data.startswith(b"<") else []
    return codes[0][:64] if codes else "-"


async def _sha256(body: bytes) -> str:
    if len(body) >= _HASH_ON_THREAD:
        return (await asyncio.to_thread(hashlib.sha256, body)).hexdigest()
    return hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256


class NoSuchKey(Exception):
    """The object asked for does not exist."""


class S3Client:
    def __init__(
        self, *, bucket: str, credentials: Credentials, region: str, endpoint_url: str | None = None,
        path_style: bool = False, timeout_s: float = 30.0,
    ) -> None:  # fmt: skip
        endpoint = urlsplit(endpoint_url or f"https://s3.{region}.amazonaws.com")
        self._scheme = endpoint.scheme
        self._host = endpoint.netloc if path_style else f"{bucket}.{endpoint.netloc}"
        self._base_path = f"/{uri_encode(bucket)}" if path_style else ""
        self._credentials = credentials
        self._region = region
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _send(
        self, method: str, key: str, query: Mapping[str, str], body: bytes, headers: Mapping[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """One signed request; the response is the caller's to read and release."""
        path = self._base_path + "/" + uri_encode(key, keep_slash=True)
        signed = sign(
            self._credentials, method=method, host=self._host, path=path, query=query, headers=headers or {},
            payload_sha256=await _sha256(body), region=self._region, now=datetime.now(UTC),
        )  # fmt: skip
        qs = canonical_query(query)
        url = URL(f"{self._scheme}://{self._host}{path}{'?' + qs if qs else ''}", encoded=True)
        data = body if method in ("PUT", "POST") else None
        return await self._http().request(method, url, data=data, headers=signed)

    async def _call(
        self, what: str, method: str, key: str, *, query: Mapping[str, str] | None = None, body: bytes = b"",
        ok: tuple[int, ...] = (200,), headers: Mapping[str, str] | None = None, attempts: int = _ATTEMPTS,
    ) -> tuple[int, bytes, Mapping[str, str]]:  # fmt: skip
        """A whole call: (status, body, headers) for a status in ``ok``; anything else is the store's 503."""
        for attempt in range(attempts):
            try:
                response = await self._send(method, key, query or {}, body, headers)
                async with response:
                    data = await response.read()
            except _TRANSPORT as exc:
                failure = type(exc).__name__
            else:
                if response.status in ok:
                    return response.status, data, response.headers
                failure = f"{response.status} {_error_code(data)}"
                if response.status < 500:
                    break  # the request itself is refused: asking again changes nothing
            if attempt + 1 < attempts:
                await asyncio.sleep(0.2 * 2**attempt)
        _unavailable(what, failure)

    async def put(self, key: str, body: bytes, content_type: str = "application/octet-stream") -> None:
        await self._call("put", "PUT", key, body=body, headers={"content-type": content_type})

    async def get(self, key: str) -> bytes | None:
        """A small object whole; None when there is none (a missing bucket is no answer: a 503)."""
        status, data, _ = await self._call("get", "GET", key, ok=(200, 404))
        if status == 200:
            return data
        if _error_code(data) != "NoSuchKey":
            _unavailable("get", f"404 {_error_code(data)}")
        return None

    async def delete(self, key: str) -> None:
        await self._call("delete", "DELETE", key, ok=(200, 204))

    async def list_page(self, prefix: str, *, start_after: str | None = None, token: str | None = None, max_keys: int = 1000) -> Listing:
        """Keys under ``prefix`` in key order, after ``start_after``, from where ``token`` left off."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys)}
        if start_after is not None:
            query["start-after"] = start_after
        if token is not None:
            query["continuation-token"] = token
        _, data, _ = await self._call("list", "GET", "", query=query)
        root = _xml(data)
        truncated = _texts(root, "IsTruncated") == ["true"]
        tokens = _texts(root, "NextContinuationToken")
        keys = [k for contents in root if _local(contents.tag) == "Contents" for k in _texts(contents, "Key")]
        return Listing(keys, tokens[0] if truncated and tokens else None)

    async def stream(self, key: str, chunk_bytes: int) -> AsyncGenerator[bytes, None]:
        """The object's bytes in chunks; ``NoSuchKey`` (before any chunk) when there is none."""
        for attempt in range(_ATTEMPTS):
            try:
                response = await self._send("GET", key, {}, b"")
            except _TRANSPORT as exc:
                failure = type(exc).__name__
            else:
                async with response:
                    if response.status == 200:
                        try:
                            async for chunk in response.content.iter_chunked(chunk_bytes):
                                yield chunk
                        except _TRANSPORT as exc:
                            _unavailable("get", type(exc).__name__)  # after the first byte: never tried again
                        return
                    data = await response.read()
                code = _error_code(data)
                if response.status == 404 and code == "NoSuchKey":
                    raise NoSuchKey
                failure = f"{response.status} {code}"
                if response.status < 500:
                    break
            if attempt + 1 < _ATTEMPTS:
                await asyncio.sleep(0.2 * 2**attempt)
        _unavailable("get", failure)

    async def start_upload(self, key: str) -> str:
        _, data, _ = await self._call("start upload", "POST", key, query={"uploads": ""}, attempts=1)
        ids = _texts(_xml(data), "UploadId")
        if not ids or not ids[0]:
            _unavailable("start upload", "no UploadId")
        return ids[0]

    async def upload_part(self, key: str, upload_id: str, number: int, body: bytes) -> str:
        """Upload one part; its ETag, which completing the upload names."""
        _, _, headers = await self._call("upload part", "PUT", key, query={"partNumber": str(number), "uploadId": upload_id}, body=body)
        etag = headers.get("ETag")
        if not etag:
            _unavailable("upload part", "no ETag")
        return etag

    async def complete_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        parts = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{_escape(e)}</ETag></Part>" for n, e in enumerate(etags, 1))
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        _, data, _ = await self._call("complete upload", "POST", key, query={"uploadId": upload_id}, body=body, attempts=1)
        if _local(_xml(data).tag) == "Error":  # S3 may fail a completion inside a 200
            _unavailable("complete upload", f"200 {_error_code(data)}")

    async def abort_upload(self, key: str, upload_id: str) -> None:
        await self._call("abort upload", "DELETE", key, query={"uploadId": upload_id}, ok=(200, 204, 404))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _unavailable(what: str, failure: str) -> NoReturn:
    log.warning("S3 %s failed: %s", what, failure)
    raise FileStoreUnavailable("The file store is unavailable; try again shortly.", retry_after=1)
