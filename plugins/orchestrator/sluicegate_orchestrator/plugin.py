"""The orchestrator as a gateway plugin: workers inside ``sluicegate serve`` or ``sluicegate worker``.

Enabled in the config as ``orchestrator``. The task kinds it runs are the ones
the enabled plugins offer (``Plugin.task_handlers()``, read from the serving
config version at each task, so a reload that changes a handler's options is
seen by the next task). A handler gets the ``StepContext`` of its task; its
model calls go through the gateway's pipeline (``services.complete``) as the
task's tenant, so that tenant's budgets, PII policy, routing and ledger apply.

State: tasks in SQLite (``store`` empty: a file in the plugin's data
directory) or PostgreSQL (``store: postgresql://...``); the queue on Redis
Streams at the gateway's ``state.redis_url``. The admin console shows the
tasks, the dead letters of ``queue`` and their replay (``console.TasksPanel``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar, Literal

import msgspec
import redis.asyncio as aioredis

from core.console_panel import ConsolePanel
from core.plugin import Plugin, Services
from sluicegate_orchestrator.backoff import RetryPolicy
from sluicegate_orchestrator.cli import open_store
from sluicegate_orchestrator.client import Orchestrator
from sluicegate_orchestrator.console import TasksPanel
from sluicegate_orchestrator.model import DEFAULT_QUEUE
from sluicegate_orchestrator.queue import DEFAULT_PREFIX
from sluicegate_orchestrator.store import TaskStore
from sluicegate_orchestrator.worker import Handler, Worker

Role = Literal["serve", "worker"]


class OrchestratorOptions(msgspec.Struct, forbid_unknown_fields=True):
    # postgresql://... or a SQLite path; empty: tasks.sqlite in the plugin's data directory (the gateway plugin's default too).
    store: str = ""
    prefix: str = DEFAULT_PREFIX
    queue: str = DEFAULT_QUEUE
    concurrency: int = msgspec.field(default=4)
    visibility_timeout_s: float = 30.0
    # Retries of a failing step: exponential backoff with full jitter between these bounds.
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    # Where workers run: in `serve` replicas, in `sluicegate worker` processes, or both.
    run_in: list[Role] = msgspec.field(default_factory=lambda: ["serve", "worker"])
    # A task still running at shutdown gets this long; then it stays pending for another worker.
    stop_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.visibility_timeout_s <= 0:
            raise ValueError("concurrency must be at least 1 and visibility_timeout_s positive")


class _LiveHandlers(Mapping[str, Handler]):
    """The enabled plugins' handlers, looked up per task in the serving version."""

    def __init__(self, services: Services) -> None:
        self._services = services

    def __getitem__(self, kind: str) -> Handler:
        found: Handler = self._services.task_handlers()[kind]
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._services.task_handlers())

    def __len__(self) -> int:
        return len(self._services.task_handlers())


def open_orchestrator(options: OrchestratorOptions, services: Services) -> tuple[Orchestrator, TaskStore, aioredis.Redis]:
    """The client on the gateway's Redis and the configured store (a missing Redis is a clear error at start)."""
    if not services.redis_url:
        raise RuntimeError("the orchestrator plugin needs state.redis_url (tasks are queued on Redis Streams)")
    store_url = options.store or str(Path(services.data_dir) / "tasks.sqlite")
    if not options.store:
        Path(services.data_dir).mkdir(parents=True, exist_ok=True)
    store = open_store(store_url)
    redis = aioredis.from_url(services.redis_url)
    return Orchestrator(store, redis, prefix=options.prefix), store, redis


class OrchestratorPlugin(Plugin):
    name: ClassVar[str] = "orchestrator"
    Options = OrchestratorOptions

    def __init__(self, options: OrchestratorOptions, services: Services) -> None:
        super().__init__(options, services)
        self.orchestrator: Orchestrator | None = None
        self._redis: aioredis.Redis | None = None
        self._store: TaskStore | None = None

    async def start(self) -> None:
        self.orchestrator, self._store, self._redis = open_orchestrator(self.options, self.services)

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
        if self._redis is not None:
            await self._redis.aclose()

    def console_panels(self) -> list[ConsolePanel]:
        return [TasksPanel(lambda: self.orchestrator, self.options.queue, self.services)]

    async def worker(self) -> None:
        options: OrchestratorOptions = self.options
        if self.services.role not in options.run_in or self.orchestrator is None:
            return
        retry = RetryPolicy(base_s=options.backoff_base_s, cap_s=options.backoff_max_s)
        worker = Worker(
            self.orchestrator, {}, queue=options.queue, concurrency=options.concurrency,
            visibility_timeout_s=options.visibility_timeout_s, retry=retry,
        )  # fmt: skip
        worker.handlers = _LiveHandlers(self.services)  # type: ignore[assignment]
        self.services.log.info("orchestrator worker %s on queue %s", worker.consumer, options.queue)
        loop = worker.start()
        try:
            await asyncio.shield(loop)
        except asyncio.CancelledError:
            await worker.stop(grace_s=options.stop_grace_s)
            raise
