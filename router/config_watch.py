"""Watching the embedded config file: an edit reaches ``on_change`` once, after the editor has finished.

Polling ``os.stat`` keeps this free of dependencies and portable, and it sees
editors that write a new file and rename it over the old one (the inode
changes) as well as in-place writes. A change is read only once the stat has
stayed the same for ``debounce_s``, since editors save in several steps, and
fires only when the content's sha256 differs from the last content loaded or
fired. Logs name the path and the error, never the content.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("sluicegate.config")

# (st_mtime_ns, st_size, st_ino, st_dev), or None while the file cannot be stat'ed.
_Stat = tuple[int, int, int, int] | None


class FileWatcher:
    def __init__(
        self,
        path: str | os.PathLike[str],
        on_change: Callable[[bytes], Awaitable[None]],
        *,
        debounce_s: float = 0.2,
        poll_s: float = 0.1,
    ) -> None:
        self._path = Path(path)
        self._on_change = on_change
        self._debounce_s = debounce_s
        self._poll_s = poll_s
        self._seen: _Stat = None
        self._digest: bytes | None = None
        self._stat_errno: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Remember what is there now (it was loaded at start-up, so it does not fire) and watch for changes."""
        self._seen = self._stat()
        if self._seen is not None:
            data = await self._read()
            if data is not None:
                self._digest = hashlib.sha256(data).digest()
        self._task = asyncio.create_task(self._run(), name=f"config-watch:{self._path.name}")

    async def close(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            changed = self._stat()
            if changed == self._seen:
                continue
            self._seen = await self._settle(changed)
            if self._seen is None:
                continue  # deleted, or a rename still in progress: wait for the file to come back
            data = await self._read()
            if data is None:
                continue
            digest = hashlib.sha256(data).digest()
            if digest == self._digest:
                continue
            # Counted as seen before the call, so content the handler rejects does not fire again until it changes.
            self._digest = digest
            try:
                await self._on_change(data)
            except Exception as exc:  # whatever the handler does wrong, the next edit must still be seen
                log.error("config file change handler failed for %s (%s); still watching", self._path, type(exc).__name__)

    async def _settle(self, stat: _Stat) -> _Stat:
        """The stat once it has stayed the same for ``debounce_s``."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        # While settling, look more often than while idle: a change is under way.
        step = min(self._poll_s, max(self._debounce_s / 4, 0.01))
        while loop.time() - since < self._debounce_s:
            await asyncio.sleep(step)
            now = self._stat()
            if now != stat:
                stat, since = now, loop.time()
        return stat

    def _stat(self) -> _Stat:
        try:
            st = os.stat(self._path)
        except (FileNotFoundError, NotADirectoryError):
            self._stat_errno = None
            return None
        except OSError as exc:
            # Logged once per kind of failure, not once per poll.
            if exc.errno != self._stat_errno:
                log.warning("config file %s cannot be checked (%s); waiting for it", self._path, exc.strerror)
            self._stat_errno = exc.errno
            return None
        self._stat_errno = None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    async def _read(self) -> bytes | None:
        """The file's bytes; None when it is gone (waited for) or unreadable (retried on its next change)."""
        try:
            return await asyncio.to_thread(self._path.read_bytes)
        except FileNotFoundError:
            self._seen = None
            return None
        except OSError as exc:
            log.warning("config file %s could not be read (%s); retrying on its next change", self._path, exc.strerror)
            return None
