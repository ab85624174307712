"""The embedded batch store: records and result lines as files beside the Files API's.

``<root>/batches/<tenant digest>/<id>.json`` is the record, rewritten whole
(write, then rename) under an exclusive ``flock`` of ``<id>.lock``, so that a
cancel from one worker process and the runner's progress from another never
overwrite each other. ``<id>.output.jsonl`` and ``<id>.error.jsonl`` collect
result lines as requests finish, and ``active/<id>`` (holding the tenant id)
marks a batch the runner must start, resume or finish: the runner lists that
folder, not every batch ever made.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import IO

import msgspec

from router.batch_records import ACTIVE, BatchRecord, Part
from router.files_store_local import CHUNK_BYTES, on_thread, tenant_folder, write_atomically

_BATCH_ID = re.compile(r"^batch_[A-Za-z0-9_-]{1,64}$")
_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(BatchRecord).decode


def valid_batch_id(batch_id: str) -> bool:
    return _BATCH_ID.match(batch_id) is not None


class LocalBatchStore:
    def __init__(self, path: str) -> None:
        self.root = Path(path) / "batches"
        self._active = self.root / "active"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _path(self, tenant: str, batch_id: str, suffix: str) -> Path:
        return tenant_folder(self.root, tenant) / f"{batch_id}{suffix}"

    def _read(self, tenant: str, batch_id: str) -> BatchRecord | None:
        try:
            record = _decode(self._path(tenant, batch_id, ".json").read_bytes())
        except (FileNotFoundError, msgspec.DecodeError):
            return None
        return record if record.tenant == tenant else None

    def _write(self, record: BatchRecord) -> None:
        batch_id = record.batch.id
        write_atomically(self._path(record.tenant, batch_id, ".json"), _encode(record))
        marker = self._active / batch_id
        if record.batch.status in ACTIVE:
            if not marker.exists():
                write_atomically(marker, record.tenant.encode())
        else:
            marker.unlink(missing_ok=True)

    async def create(self, record: BatchRecord) -> None:
        def write() -> None:
            self._path(record.tenant, record.batch.id, "").parent.mkdir(parents=True, exist_ok=True)
            self._active.mkdir(parents=True, exist_ok=True)
            self._write(record)

        await on_thread(write)

    async def get(self, tenant: str, batch_id: str) -> BatchRecord | None:
        if not valid_batch_id(batch_id):
            return None
        return await on_thread(partial(self._read, tenant, batch_id))

    async def page(self, tenant: str, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        folder = tenant_folder(self.root, tenant)

        def scan() -> list[BatchRecord]:
            if not folder.is_dir():
                return []
            found = (self._read(tenant, path.name.removesuffix(".json")) for path in folder.glob("batch_*.json"))
            return [r for r in found if r is not None]

        records = await on_thread(scan)
        records.sort(key=lambda r: (r.created_ns, r.batch.id), reverse=True)
        if after is not None:
            ids = [r.batch.id for r in records]
            records = records[ids.index(after) + 1 :] if after in ids else []
        return records[:limit], len(records) > limit

    async def update(self, tenant: str, batch_id: str, change: Callable[[BatchRecord], BatchRecord]) -> BatchRecord | None:
        if not valid_batch_id(batch_id):
            return None

        def apply() -> BatchRecord | None:
            lock_path = self._path(tenant, batch_id, ".lock")
            if not lock_path.parent.is_dir():
                return None
            with open(lock_path, "ab") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
                record = self._read(tenant, batch_id)
                if record is None:
                    return None
                new = change(record)
                if new is not record:
                    self._write(new)
                return new

        return await on_thread(apply)

    async def active(self) -> list[tuple[str, str]]:
        def scan() -> list[tuple[str, str]]:
            if not self._active.is_dir():
                return []
            out = []
            for marker in self._active.iterdir():
                if valid_batch_id(marker.name):
                    try:
                        out.append((marker.read_bytes().decode(), marker.name))
                    except (FileNotFoundError, UnicodeDecodeError):
                        continue  # finished meanwhile, or not one of ours
            return out

        return await on_thread(scan)

    async def append(self, tenant: str, batch_id: str, part: Part, lines: bytes) -> None:
        path = self._path(tenant, batch_id, f".{part}.jsonl")

        def write() -> None:
            with open(path, "a+b") as fh:
                end = fh.seek(0, os.SEEK_END)
                if end:
                    fh.seek(end - 1)
                    # A line a crash cut short stays on a line of its own, skipped when read.
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())

        await on_thread(write)

    async def read(self, tenant: str, batch_id: str, part: Part) -> AsyncIterator[bytes]:
        path = self._path(tenant, batch_id, f".{part}.jsonl")

        def open_part() -> IO[bytes] | None:
            try:
                return open(path, "rb")
            except FileNotFoundError:
                return None

        handle = await on_thread(open_part)
        if handle is None:
            return
        try:
            while chunk := await on_thread(partial(handle.read, CHUNK_BYTES)):
                yield chunk
        finally:
            handle.close()

    async def drop_parts(self, tenant: str, batch_id: str) -> None:
        def remove() -> None:
            for part in ("output", "error"):
                self._path(tenant, batch_id, f".{part}.jsonl").unlink(missing_ok=True)

        await on_thread(remove)
