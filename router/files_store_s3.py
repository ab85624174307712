"""The production file store: an S3-compatible bucket every replica shares.

Under ``<prefix>files/<tenant digest>/`` (the digest of the tenant id, as the
local store names its folders) each file has:

- ``data/<id>.<upload>``: the bytes, one object per upload (a single PUT, or
  a multipart upload for a file larger than ``part_bytes``);
- ``meta/<id>.json``: the File object, its tenant, its creation time and which
  ``data/`` object it is. Written last, it is what makes the file exist: a
  reader never sees a file half-uploaded, and replacing a file (a batch's
  output written again) is one PUT of the metadata;
- ``asc/<ns>.<id>.<purpose>`` and ``desc/<inverted ns>.<id>.<purpose>``:
  empty objects whose keys sort by creation time (nanoseconds), oldest or
  newest first. A page of a listing is one ``ListObjectsV2`` after the cursor's
  key, filtered by purpose on the key, then the metadata of the files on the
  page only; content is never read to list or retrieve.

An index key whose metadata is missing, or names another creation time, is
left over from a crash or a replacement and is skipped. An expired file is
removed on sight, as by the local store. Every call of the store ends within
``timeout_s`` of silence from the server; trouble with S3 is ``FileStoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing

import msgspec

from core.config import ConfigError, S3Config, SecretRef
from router.files_store import FileObject, Order, file_not_found, valid_file_id
from router.s3_client import NoSuchKey, S3Client
from router.s3_sigv4 import Credentials

CHUNK_BYTES = 1024 * 1024
# Metadata read side by side while filling a page.
_READ_AHEAD = 32
_NS_DIGITS = 20
_NS_MAX = 10**_NS_DIGITS - 1


class _Meta(msgspec.Struct):
    tenant: str
    created_ns: int
    data_key: str
    file: FileObject


_encode = msgspec.json.encode
_decode_meta = msgspec.json.Decoder(_Meta).decode


def tenant_digest(tenant: str) -> str:
    return hashlib.sha256(tenant.encode()).hexdigest()[:40]


def _secret(ref: SecretRef | str | None, key: str) -> str:
    try:
        value = ref.resolve() if isinstance(ref, SecretRef) else ref
    except ConfigError as exc:
        raise ConfigError(f"key `state.s3.{key}`: {exc}") from None
    if not value:
        raise ConfigError(f"key `state.s3.{key}`: required when `state.files` is 's3'")
    return value


def s3_client(config: S3Config) -> S3Client:
    """The client for ``state.s3``, its secrets resolved (an error names the key, never a value)."""
    credentials = Credentials(
        access_key_id=_secret(config.access_key_id, "access_key_id"),
        secret_access_key=_secret(config.secret_access_key, "secret_access_key"),
        session_token=_secret(config.session_token, "session_token") if config.session_token is not None else None,
    )
    return S3Client(
        bucket=config.bucket, credentials=credentials, region=config.region, endpoint_url=config.endpoint_url,
        path_style=config.path_style, timeout_s=config.timeout_s,
    )  # fmt: skip


class S3FileStore:
    def __init__(
        self, client: S3Client, *, prefix: str = "", part_bytes: int = 8 * 1024 * 1024, clock: Callable[[], float] = time.time
    ) -> None:
        self._s3 = client
        self._root = f"{prefix.strip('/')}/files/" if prefix.strip("/") else "files/"
        self._part_bytes = part_bytes
        self._clock = clock

    async def start(self) -> None:
        return None  # nothing is asked of S3 before the first call, so a replica starts while it is down

    async def close(self) -> None:
        await self._s3.close()

    def _folder(self, tenant: str) -> str:
        return f"{self._root}{tenant_digest(tenant)}/"

    def _meta_key(self, tenant: str, file_id: str) -> str:
        return f"{self._folder(tenant)}meta/{file_id}.json"

    def _index_keys(self, tenant: str, meta: _Meta) -> tuple[str, str]:
        name, folder = f"{meta.file.id}.{meta.file.purpose}", self._folder(tenant)
        return f"{folder}asc/{meta.created_ns:0{_NS_DIGITS}d}.{name}", f"{folder}desc/{_NS_MAX - meta.created_ns:0{_NS_DIGITS}d}.{name}"

    async def create(
        self,
        tenant: str,
        *,
        filename: str,
        purpose: str,
        content: AsyncIterable[bytes],
        expires_at: int | None = None,
        file_id: str | None = None,
    ) -> FileObject:
        replacing = file_id is not None
        file_id = file_id or f"file-{secrets.token_hex(12)}"
        if not valid_file_id(file_id):
            raise ValueError("not a file id")
        data_key = f"{self._folder(tenant)}data/{file_id}.{secrets.token_hex(6)}"
        size = await self._upload(data_key, content)
        record = FileObject(
            id=file_id, bytes=size, created_at=int(self._clock()), filename=filename, purpose=purpose, expires_at=expires_at
        )
        meta = _Meta(tenant=tenant, created_ns=time.time_ns(), data_key=data_key, file=record)
        try:
            previous = await self._read_meta(tenant, file_id) if replacing else None
            await asyncio.gather(*(self._s3.put(key, b"") for key in self._index_keys(tenant, meta)))
            await self._s3.put(self._meta_key(tenant, file_id), _encode(meta), "application/json")
        except BaseException:
            await self._forget(tenant, meta, keep_meta=True)
            raise
        if previous is not None:
            await self._forget(tenant, previous, keep_meta=True)
        return record

    async def _upload(self, key: str, content: AsyncIterable[bytes]) -> int:
        """``content`` as the object ``key``: one PUT when it is small, parts as it comes when not; its size."""
        buffer = bytearray()
        size = 0
        upload_id: str | None = None
        etags: list[str] = []
        try:
            async for chunk in content:
                buffer += chunk
                size += len(chunk)
                if len(buffer) >= self._part_bytes:
                    if upload_id is None:
                        upload_id = await self._s3.start_upload(key)
                    etags.append(await self._s3.upload_part(key, upload_id, len(etags) + 1, bytes(buffer)))
                    buffer.clear()
            if upload_id is None:
                await self._s3.put(key, bytes(buffer))
                return size
            if buffer:
                etags.append(await self._s3.upload_part(key, upload_id, len(etags) + 1, bytes(buffer)))
            await self._s3.complete_upload(key, upload_id, etags)
        except BaseException:
            if upload_id is not None:
                await _quietly(self._s3.abort_upload(key, upload_id))
            raise
        return size

    async def _read_meta(self, tenant: str, file_id: str) -> _Meta | None:
        """The metadata if the file is the tenant's and alive; an expired file is removed on sight."""
        raw = await self._s3.get(self._meta_key(tenant, file_id))
        if raw is None:
            return None
        try:
            meta = _decode_meta(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # not one of ours: never served
        if meta.tenant != tenant or meta.file.id != file_id:
            return None
        expires = meta.file.expires_at
        if expires is not None and expires <= self._clock():
            await self._forget(tenant, meta)
            return None
        return meta

    async def _forget(self, tenant: str, meta: _Meta, *, keep_meta: bool = False) -> None:
        """Remove a file: its metadata first (it is gone for readers at once), then what only it names."""
        if not keep_meta:
            await self._s3.delete(self._meta_key(tenant, meta.file.id))
        keys = (meta.data_key, *self._index_keys(tenant, meta))
        await asyncio.gather(*(_quietly(self._s3.delete(key)) for key in keys))

    async def get(self, tenant: str, file_id: str) -> FileObject | None:
        if not valid_file_id(file_id):
            return None
        meta = await self._read_meta(tenant, file_id)
        return meta.file if meta is not None else None

    async def page(self, tenant: str, *, purpose: str | None, after: str | None, limit: int, order: Order) -> tuple[list[FileObject], bool]:
        index = f"{self._folder(tenant)}{order}/"
        start_after = None
        if after is not None:
            cursor = await self._read_meta(tenant, after) if valid_file_id(after) else None
            if cursor is None:
                return [], False
            start_after = self._index_keys(tenant, cursor)[0 if order == "asc" else 1]
        found: list[FileObject] = []
        token: str | None = None
        while True:
            listing = await self._s3.list_page(index, start_after=start_after, token=token)
            entries = [e for e in map(_entry, listing.keys) if e is not None and (purpose is None or e[2] == purpose)]
            for batch in _batches(entries, _READ_AHEAD):
                metas = await asyncio.gather(*(self._read_meta(tenant, file_id) for _, file_id, _ in batch))
                found += [m.file for (ns, _, _), m in zip(batch, metas) if m is not None and _ns(m, order) == ns]
                if len(found) > limit:
                    return found[:limit], True
            token = listing.next_token
            if token is None:
                return found, False

    async def content(self, tenant: str, file_id: str) -> AsyncIterator[bytes]:
        meta = await self._read_meta(tenant, file_id) if valid_file_id(file_id) else None
        if meta is None:
            raise file_not_found(file_id)
        try:
            async with aclosing(self._s3.stream(meta.data_key, CHUNK_BYTES)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except NoSuchKey:
            raise file_not_found(file_id) from None  # deleted or replaced since its metadata was read

    async def delete(self, tenant: str, file_id: str) -> bool:
        meta = await self._read_meta(tenant, file_id) if valid_file_id(file_id) else None
        if meta is None:
            return False
        await self._forget(tenant, meta)
        return True


def _entry(key: str) -> tuple[int, str, str] | None:
    """(sort number, file id, purpose) of an index key; None for a key that is not one."""
    parts = key.rsplit("/", 1)[-1].split(".", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not valid_file_id(parts[1]):
        return None
    return int(parts[0]), parts[1], parts[2]


def _ns(meta: _Meta, order: Order) -> int:
    return meta.created_ns if order == "asc" else _NS_MAX - meta.created_ns


def _batches(items: list[tuple[int, str, str]], size: int) -> Iterable[list[tuple[int, str, str]]]:
    return (items[i : i + size] for i in range(0, len(items), size))


async def _quietly(call: Awaitable[object]) -> None:
    """Best-effort clean-up: a leftover is skipped by readers, and must not hide the error that caused it."""
    with contextlib.suppress(Exception):
        await call
