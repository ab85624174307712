"""Sluicegate's task orchestrator: durable tasks on Redis Streams, state in PostgreSQL or SQLite.

A library for now; the gateway's plugin wiring (routes, ``sluicegate worker``,
LLM calls through the pipeline) comes later. The parts:

- ``Orchestrator`` (client): create (idempotent per tenant and key), get, list,
  cancel, the dead list and replay.
- ``Worker``: runs handlers by task kind, at least once, with per-step memos,
  retries with backoff and jitter, dead-lettering, reclaim from dead workers.
- ``StepContext``: what a handler gets (steps, compensations, child tasks).
- ``SqliteTaskStore`` / ``PostgresTaskStore`` behind ``TaskStore``.
- ``cli.main(argv)``: ``dead`` and ``replay``.
- ``console.TasksPanel``: the admin console's tasks page (tasks, dead letters, replay, cancel).
"""

from __future__ import annotations

from sluicegate_orchestrator.backoff import RetryPolicy
from sluicegate_orchestrator.client import DeadTask, Orchestrator
from sluicegate_orchestrator.context import ChildFailed, ChildOutcome, StepContext
from sluicegate_orchestrator.hooks import Hooks
from sluicegate_orchestrator.model import (
    FINAL,
    Json,
    NewTask,
    Permanent,
    StepRecord,
    Task,
    TaskCancelled,
    TaskStatus,
    TaskStoreUnavailable,
)
from sluicegate_orchestrator.queue import Entry, TaskQueue
from sluicegate_orchestrator.store import TaskStore
from sluicegate_orchestrator.store_postgres import PostgresTaskStore
from sluicegate_orchestrator.store_sqlite import SqliteTaskStore
from sluicegate_orchestrator.worker import Handler, Worker

__all__ = [
    "FINAL",
    "ChildFailed",
    "ChildOutcome",
    "DeadTask",
    "Entry",
    "Handler",
    "Hooks",
    "Json",
    "NewTask",
    "Orchestrator",
    "Permanent",
    "PostgresTaskStore",
    "RetryPolicy",
    "SqliteTaskStore",
    "StepContext",
    "StepRecord",
    "Task",
    "TaskCancelled",
    "TaskQueue",
    "TaskStatus",
    "TaskStore",
    "TaskStoreUnavailable",
    "Worker",
]
