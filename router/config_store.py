"""Where versions of the live configuration are kept, and how replicas hear of a new one.

Two stores implement ``ConfigStore``: in this process (embedded: the watched
file commits into it) and PostgreSQL with Redis pub/sub
(``router.config_store_postgres``). History is append-only: a rollback is a new
version whose document is an old one's. A notification carries only the
version number and hash; a replica reads the document from the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from core.config import LiveConfig
from core.config_version import ConfigVersion, VersionConflict, VersionNotFound, VersionSummary, document_hash

# Called with (version, hash) when a version is committed, by any replica.
Listener = Callable[[int, str], None]
MAX_HISTORY_LIMIT = 1000


class ConfigStore(Protocol):
    async def start(self) -> None:
        """Connect (and migrate); notifications start to flow to the listeners."""

    async def close(self) -> None: ...

    async def latest(self) -> ConfigVersion | None:
        """The newest version; None when the history is empty."""

    async def get(self, version: int) -> ConfigVersion:
        """One version; ``VersionNotFound`` for a number never committed."""

    async def history(self, limit: int = 50, before: int | None = None) -> list[VersionSummary]:
        """Newest first, versions below ``before`` when given."""

    async def commit(self, document: LiveConfig, *, expected: int | None, actor: str, reason: str) -> ConfigVersion:
        """Append a version. ``expected`` is the version the writer read (None: no
        check, 0: the history must be empty); another one is the newest:
        ``VersionConflict``. The store unreachable: ``ConfigStoreUnavailable``.
        The document must already be valid; it is stored with references, never
        resolved secrets."""

    def listen(self, listener: Listener) -> None:
        """Hear of every committed version, this replica's own included."""


class MemoryConfigStore:
    """The embedded store: history in this process, lost on restart (the file is the source)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._versions: list[ConfigVersion] = []
        self._listeners: list[Listener] = []
        self._clock = clock

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def latest(self) -> ConfigVersion | None:
        return self._versions[-1] if self._versions else None

    async def get(self, version: int) -> ConfigVersion:
        if 1 <= version <= len(self._versions):
            return self._versions[version - 1]
        raise VersionNotFound(f"No config version {version}.")

    async def history(self, limit: int = 50, before: int | None = None) -> list[VersionSummary]:
        top = len(self._versions) if before is None else min(before - 1, len(self._versions))
        return [v.summary() for v in reversed(self._versions[max(0, top - limit) : max(0, top)])]

    async def commit(self, document: LiveConfig, *, expected: int | None, actor: str, reason: str) -> ConfigVersion:
        current = len(self._versions)
        if expected is not None and expected != current:
            raise VersionConflict(f"Config version {expected} is not the latest (the latest is {current}).")
        version = ConfigVersion(
            version=current + 1, hash=document_hash(document), actor=actor, reason=reason, created_at=self._clock(), document=document
        )
        self._versions.append(version)
        for listener in self._listeners:
            listener(version.version, version.hash)
        return version

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

