"""The embedded file store: a local directory, one folder per tenant.

``<root>/files/<tenant digest>/<id>.data`` holds the bytes and ``<id>.json`` the
metadata (the File object and its tenant). The content is written first, under
a temporary name, and renamed; the metadata is written the same way last, so a
file is visible only once whole. The folder is named by a digest of the tenant
id (ids may hold ``/``), and the metadata names the tenant too, so a file is
never served to another tenant. Nothing is created until the first upload.
Several worker processes of one host may share the directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import IO, TypeVar

import msgspec

from router.files_store import FileObject, FileStoreUnavailable, Order, file_not_found, valid_file_id

T = TypeVar("T")
CHUNK_BYTES = 1024 * 1024


class _Meta(msgspec.Struct):
    tenant: str
    created_ns: int  # the order of listing: many files share a second
    file: FileObject


_encode = msgspec.json.encode
_decode_meta = msgspec.json.Decoder(_Meta).decode


def tenant_folder(root: Path, tenant: str) -> Path:
    return root / hashlib.sha256(tenant.encode()).hexdigest()[:40]


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` whole or not at all, for readers in any process."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def on_thread(fn: Callable[[], T]) -> T:
    """File-system work off the loop; an OS error is the store's 503, never a 500."""
    try:
        return await asyncio.to_thread(fn)
    except OSError as exc:
        raise FileStoreUnavailable(f"The file store failed ({type(exc).__name__}); try again shortly.", retry_after=1) from None


class LocalFileStore:
    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(path) / "files"
        self._clock = clock

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _paths(self, tenant: str, file_id: str) -> tuple[Path, Path]:
        folder = tenant_folder(self.root, tenant)
        return folder / f"{file_id}.data", folder / f"{file_id}.json"

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
        file_id = file_id or f"file-{secrets.token_hex(12)}"
        if not valid_file_id(file_id):
            raise ValueError("not a file id")
        data_path, meta_path = self._paths(tenant, file_id)
        tmp = data_path.with_name(f".{file_id}.{secrets.token_hex(4)}.upload")
        size = 0
        handle: IO[bytes] = await on_thread(lambda: _open_new(tmp))
        try:
            async for chunk in content:
                size += len(chunk)
                await on_thread(partial(handle.write, chunk))
            await on_thread(lambda: _finish(handle))
            now = self._clock()
            record = FileObject(id=file_id, bytes=size, created_at=int(now), filename=filename, purpose=purpose, expires_at=expires_at)
            meta = _encode(_Meta(tenant=tenant, created_ns=time.time_ns(), file=record))
            await on_thread(partial(_publish, tmp, data_path, meta_path, meta))
        except BaseException:
            handle.close()
            tmp.unlink(missing_ok=True)
            raise
        return record

    def _read_meta(self, tenant: str, meta_path: Path) -> _Meta | None:
        """The metadata if the file is the tenant's and alive; an expired file is removed on sight."""
        try:
            meta = _decode_meta(meta_path.read_bytes())
        except FileNotFoundError:
            return None
        except msgspec.DecodeError:
            return None  # not one of ours: never served
        if meta.tenant != tenant:
            return None
        expires = meta.file.expires_at
        if expires is not None and expires <= self._clock():
            meta_path.unlink(missing_ok=True)
            meta_path.with_suffix(".data").unlink(missing_ok=True)
            return None
        return meta

    async def get(self, tenant: str, file_id: str) -> FileObject | None:
        if not valid_file_id(file_id):
            return None
        meta_path = self._paths(tenant, file_id)[1]
        meta = await on_thread(lambda: self._read_meta(tenant, meta_path))
        return meta.file if meta is not None else None

    async def page(self, tenant: str, *, purpose: str | None, after: str | None, limit: int, order: Order) -> tuple[list[FileObject], bool]:
        folder = tenant_folder(self.root, tenant)

        def scan() -> list[_Meta]:
            if not folder.is_dir():
                return []
            found = (self._read_meta(tenant, path) for path in folder.glob("file-*.json"))
            return [m for m in found if m is not None and (purpose is None or m.file.purpose == purpose)]

        metas = await on_thread(scan)
        metas.sort(key=lambda m: (m.created_ns, m.file.id), reverse=order == "desc")
        files = [m.file for m in metas]
        if after is not None:
            ids = [f.id for f in files]
            files = files[ids.index(after) + 1 :] if after in ids else []
        return files[:limit], len(files) > limit

    async def content(self, tenant: str, file_id: str) -> AsyncIterator[bytes]:
        if not valid_file_id(file_id):
            raise file_not_found(file_id)
        data_path, meta_path = self._paths(tenant, file_id)

        def open_data() -> IO[bytes] | None:
            if self._read_meta(tenant, meta_path) is None:
                return None
            try:
                return open(data_path, "rb")
            except FileNotFoundError:
                return None

        handle = await on_thread(open_data)
        if handle is None:
            raise file_not_found(file_id)
        try:
            while chunk := await on_thread(lambda: handle.read(CHUNK_BYTES)):
                yield chunk
        finally:
            handle.close()

    async def delete(self, tenant: str, file_id: str) -> bool:
        if not valid_file_id(file_id):
            return False
        data_path, meta_path = self._paths(tenant, file_id)

        def remove() -> bool:
            if self._read_meta(tenant, meta_path) is None:
                return False
            meta_path.unlink(missing_ok=True)  # invisible first, then gone
            data_path.unlink(missing_ok=True)
            return True

        return await on_thread(remove)


def _open_new(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb")


def _publish(tmp: Path, data_path: Path, meta_path: Path, meta: bytes) -> None:
    os.replace(tmp, data_path)
    write_atomically(meta_path, meta)


def _finish(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
