"""Applying config versions: validate, build beside the serving snapshot, start what is new, swap.

Every replica runs one ``Reloader``. It hears of versions from its store (this
process's own commits, Redis pub/sub in production), reconciles with the store
every ``state.config_reconcile_s`` so a lost message or a Redis outage is
caught up, and in embedded mode watches the config file. A version that does
not validate is refused with the key named and the serving snapshot stays;
nothing is ever half-applied. Writers (the admin API, the canary controller)
commit through ``commit``, which validates before anything is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from core.config import START_TIME_KEYS, Config, ConfigError, LiveConfig
from core.config_check import decode_config
from core.config_version import ConfigStoreUnavailable, ConfigVersion, InvalidConfig, VersionNotFound, document_hash
from router.config_resolve import Resolved, resolve
from router.config_store import ConfigStore
from router.config_watch import FileWatcher
from router.metrics import Metrics
from router.plugins import NO_PLUGINS, PluginHost
from router.snapshot import Built, Snapshot, build, with_failed
from serving.base import Engine

log = logging.getLogger("sluicegate.config")
# Retired engines are closed once idle, or after this long whatever they still run.
_RETIRE_WAIT_S = 300.0

Swapped = Callable[[Snapshot, Snapshot | None], None]


class Reloader:
    def __init__(self, base: Config, store: ConfigStore, metrics: Metrics, snapshot: Snapshot, *, source_path: str | None = None) -> None:
        # The start-time settings every version is combined with.
        self.base = base
        self.store = store
        self.metrics = metrics
        self.current = snapshot
        self._source_path = source_path
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watcher: FileWatcher | None = None
        self._reconcile: asyncio.Task[None] | None = None
        self._on_swap: list[Swapped] = []
        self._on_commit: list[Callable[[ConfigVersion], None]] = []
        # Builds each version's plugin set (None: plugins are off, as in tests of the reload alone).
        self.plugins: PluginHost | None = None

    def on_swap(self, callback: Swapped) -> None:
        self._on_swap.append(callback)

    def on_commit(self, callback: Callable[[ConfigVersion], None]) -> None:
        """Called with each version this replica writes (the audit log, where the store keeps none)."""
        self._on_commit.append(callback)

    async def start(self) -> None:
        """Serve the newest version: the store's, or the file's as version 1 when the history is empty."""
        await self.store.start()
        self.store.listen(self._heard)
        latest = await self.store.latest()
        if latest is None:
            try:
                latest = await self.store.commit(self.base.live(), expected=0, actor="file", reason="initial configuration")
            except Exception as exc:  # another replica wrote version 1 first
                log.info("initial config commit lost a race (%s); loading the latest", type(exc).__name__)
                latest = await self.store.latest()
        elif latest.hash != document_hash(self.base.live()):
            log.info("serving config version %d from the store; the file's live sections are not used", latest.version)
        if latest is not None:
            await self.apply(latest)
        interval = self.base.state.config_reconcile_s
        self._reconcile = asyncio.create_task(self._reconcile_loop(interval))
        if self._source_path is not None and self.base.state.config == "file":
            state = self.base.state
            self._watcher = FileWatcher(
                self._source_path, self._file_changed, debounce_s=state.config_watch_debounce_s, poll_s=state.config_watch_poll_s
            )
            await self._watcher.start()

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.close()
        if self._reconcile is not None:
            self._reconcile.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._reconcile] if self._reconcile else []), return_exceptions=True)
        await self.store.close()

    # --- writing ----------------------------------------------------------------

    def validate(self, document: LiveConfig) -> Resolved:
        """What a document makes with this replica's start-time settings; 422 naming the key if invalid."""
        try:
            return resolve(self.base.with_live(document))
        except ConfigError as exc:
            raise InvalidConfig(str(exc)) from None

    async def commit(self, document: LiveConfig, *, expected: int | None, actor: str, reason: str) -> ConfigVersion:
        """Validate, append a version, and serve it here before returning.

        The document's PII analyzers are loaded first: one that cannot load
        (503) stops the write before anything is stored.
        """
        await self.validate(document).policies.preload()
        version = await self.store.commit(document, expected=expected, actor=actor, reason=reason)
        for callback in self._on_commit:
            callback(version)
        await self.apply(version)
        return version

    # --- applying ---------------------------------------------------------------

    def _heard(self, version: int, hash: str) -> None:
        if version > self.current.version:
            self._spawn(self._load(version))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self, version: int) -> None:
        try:
            record = await self.store.get(version)
        except (ConfigStoreUnavailable, VersionNotFound) as exc:
            log.warning("config version %d could not be read (%s); the reconcile will retry", version, exc.code)
            return
        except ConfigError as exc:
            self.metrics.config_reloads.labels("invalid").inc()
            log.error("config version %d does not decode, still serving version %d: %s", version, self.current.version, exc)
            return
        await self.apply(record)

    async def _reconcile_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                latest = await self.store.latest()
                if latest is not None and latest.version > self.current.version:
                    await self.apply(latest)
            except ConfigStoreUnavailable:
                continue  # keep serving the last good snapshot
            except ConfigError as exc:
                log.error("the latest config version does not decode: %s", exc)
            except Exception:
                # Whatever one round meets, the loop must live: it is how a lost announcement is caught up.
                log.exception("config reconcile failed")

    async def apply(self, record: ConfigVersion) -> bool:
        """Serve ``record`` if it is newer than what serves now; False if it was refused."""
        async with self._lock:
            if record.version <= self.current.version:
                return True
            try:
                resolved = resolve(self.base.with_live(record.document))
            except ConfigError as exc:
                self.metrics.config_reloads.labels("invalid").inc()
                log.error("config version %d refused, still serving version %d: %s", record.version, self.current.version, exc)
                return False
            try:
                plugins = self.plugins.prepare(list(resolved.plugins), self.current.plugins) if self.plugins is not None else NO_PLUGINS
                built = build(resolved, record.version, record.hash, self.current, plugins)
                # Analyzers first: a version whose PII analyzer cannot load starts no engine.
                await built.snapshot.policies.preload()
                snapshot = await self._start_new(built)
            except Exception as exc:
                self.metrics.config_reloads.labels("failed").inc()
                log.error(
                    "config version %d could not be built (%s), still serving version %d",
                    record.version,
                    type(exc).__name__,
                    self.current.version,
                )
                return False
            previous, self.current = self.current, snapshot
        self._swapped(snapshot, previous, record)
        if built.retired:
            self._spawn(_retire(built.retired))
        if self.plugins is not None and previous.plugins is not snapshot.plugins:
            self._spawn(self.plugins.retire(previous.plugins, snapshot.plugins))
        return True

    async def _start_new(self, built: Built) -> Snapshot:
        """Start the plugins and engines this version adds; an engine that fails is left out (its breaker open), not the version."""
        if self.plugins is not None:
            await self.plugins.start(built.snapshot.plugins)  # a plugin that cannot start fails the version
        names = list(built.new)
        results = await asyncio.gather(*(built.new[n].start() for n in names), return_exceptions=True)
        failed = {n for n, r in zip(names, results) if isinstance(r, BaseException)}
        for name in failed:
            log.error("deployment %s failed to start; it takes no traffic until it starts", name)
        return with_failed(built.snapshot, failed) if failed else built.snapshot

    def _swapped(self, snapshot: Snapshot, previous: Snapshot | None, record: ConfigVersion) -> None:
        self.metrics.config_version.set(snapshot.version)
        self.metrics.config_reloads.labels("applied").inc()
        self.metrics.config_apply_latency.observe(max(0.0, time.time() - record.created_at))
        log.info("serving config version %d (%s, by %s)", snapshot.version, record.reason or "no reason given", record.actor)
        for callback in self._on_swap:
            callback(snapshot, previous)

    async def _file_changed(self, data: bytes) -> None:
        """An edit of the watched file: a new version if it validates; the error named if not."""
        source = self._source_path or "config"
        try:
            config = decode_config(data, source)
        except ConfigError as exc:
            self.metrics.config_reloads.labels("invalid").inc()
            log.error("config file edit refused, still serving version %d: %s", self.current.version, exc)
            return
        for key in START_TIME_KEYS:
            if getattr(config, key) != getattr(self.base, key):
                log.warning("key `%s` changed in %s: it is read at start only and takes effect after a restart", key, Path(source).name)
        try:
            await self.commit(config.live(), expected=None, actor="file", reason=f"{Path(source).name} changed")
        except InvalidConfig as exc:
            self.metrics.config_reloads.labels("invalid").inc()
            log.error("config file edit refused, still serving version %d: %s", self.current.version, exc.message)


async def _retire(engines: list[Engine]) -> None:
    """Close engines no version uses any more, once the requests still on them are done."""
    deadline = time.monotonic() + _RETIRE_WAIT_S
    while time.monotonic() < deadline and any(e.load().running for e in engines):
        await asyncio.sleep(0.5)
    for engine in engines:
        try:
            await engine.close()
        except Exception as exc:
            log.warning("a retired engine did not close cleanly: %s", type(exc).__name__)
