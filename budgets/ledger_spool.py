"""Local spool for ledger rows the database could not take, and its replay.

The spool is a JSON-lines file, fsync'd on every append so that a row handed
to it survives a crash. Replay first renames the file aside ("claims" it) so
that rows spilled while a replay runs land in a fresh file and can never be
truncated unreplayed; the claimed file is deleted only after every row in it
has been committed. A torn last line (a crash mid-append) is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import msgspec

from budgets.ledger_row import LedgerRow, LedgerStore

logger = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink durable, not just the file contents."""
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_lines(path: Path, payload: bytes) -> None:
    with open(path, "ab+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                # A torn line from a crash: end it so the next row stays parseable.
                payload = b"\n" + payload
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


class SpoolReader:
    """Reads a claimed spool file batch by batch (blocking; run in a thread)."""

    def __init__(self, path: Path, decode: Callable[[bytes], LedgerRow]) -> None:
        self._fh: IO[bytes] = open(path, "rb")  # noqa: SIM115 -- held across batches, closed by close()
        self._decode = decode
        self.skipped = 0

    def next_batch(self, size: int) -> list[LedgerRow]:
        batch: list[LedgerRow] = []
        while len(batch) < size:
            line = self._fh.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                batch.append(self._decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError):
                self.skipped += 1
        return batch

    def close(self) -> None:
        self._fh.close()


class Spool:
    """An fsync'd JSON-lines file of ledger rows; safe to use from several threads."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.claimed_path = self.path.with_name(self.path.name + ".replaying")
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")
        self._encoder = msgspec.json.Encoder()
        self._lock = threading.Lock()

    def append(self, rows: Sequence[LedgerRow]) -> None:
        if not rows:
            return
        payload = self._encoder.encode_lines(rows)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _append_lines(self.path, payload)

    def reject(self, rows: Sequence[LedgerRow]) -> None:
        """Rows the database refuses for what they contain: kept for a person to inspect."""
        with self._lock:
            _append_lines(self.rejected_path, self._encoder.encode_lines(rows))

    def pending(self) -> bool:
        return self.claimed_path.exists() or (self.path.exists() and self.path.stat().st_size > 0)

    def size(self) -> int:
        """Bytes of rows waiting to be replayed (the live file and one being replayed); two stat calls."""
        total = 0
        for path in (self.path, self.claimed_path):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def claim(self) -> Path | None:
        """The file to replay next: an unfinished claimed one first, else the live one."""
        with self._lock:
            if self.claimed_path.exists():
                return self.claimed_path
            if not self.path.exists() or self.path.stat().st_size == 0:
                return None
            os.replace(self.path, self.claimed_path)
            _fsync_dir(self.path)
            return self.claimed_path

    def release(self, claimed: Path) -> None:
        """Forget a claimed file once all its rows are committed."""
        with self._lock:
            claimed.unlink(missing_ok=True)
            _fsync_dir(claimed)


async def _bisect(store: LedgerStore, batch: list[LedgerRow], rejected: list[LedgerRow]) -> None:
    try:
        await store.write(batch)
        return
    except Exception as exc:
        if not store.refuses(exc):
            raise
    if len(batch) == 1:
        rejected.append(batch[0])
        return
    mid = len(batch) // 2
    await _bisect(store, batch[:mid], rejected)
    await _bisect(store, batch[mid:], rejected)


async def write_or_reject(store: LedgerStore, spool: Spool, batch: list[LedgerRow]) -> None:
    """Write a batch; rows the store refuses for their content are set aside.

    Without this one bad row (say a NUL byte in a text field) would fail every
    retry and the spool would grow without end. The bad rows are found by
    halving, so a big batch with one bad row costs a few extra round trips.
    Any other failure (the store is unreachable) propagates: retry later.
    """
    rejected: list[LedgerRow] = []
    try:
        await _bisect(store, batch, rejected)
    finally:
        if rejected:
            await asyncio.to_thread(spool.reject, rejected)
            logger.error("ledger: %d rows refused by the store, kept in %s", len(rejected), spool.rejected_path)


async def replay_spool(spool: Spool, store: LedgerStore, decode: Callable[[bytes], LedgerRow], batch_size: int) -> None:
    """Write every spooled row to the store; raises (leaving the rest spooled) if the store fails."""
    while True:
        claimed = await asyncio.to_thread(spool.claim)
        if claimed is None:
            return
        reader = await asyncio.to_thread(SpoolReader, claimed, decode)
        try:
            replayed = 0
            while batch := await asyncio.to_thread(reader.next_batch, batch_size):
                await write_or_reject(store, spool, batch)
                replayed += len(batch)
        finally:
            reader.close()
        if reader.skipped:
            logger.warning("ledger: skipped %d unreadable spool lines", reader.skipped)
        await asyncio.to_thread(spool.release, claimed)
        logger.info("ledger: replayed %d spooled rows", replayed)
