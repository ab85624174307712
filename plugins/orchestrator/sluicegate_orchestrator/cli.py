"""The operator's commands for dead tasks: ``dead`` lists them, ``replay`` runs them again.

``main(argv)`` is what a later ``sluicegate worker`` command calls::

    dead   [--redis URL] [--store URL|PATH] [--queue NAME] [--prefix P]
    replay [--redis URL] [--store URL|PATH] [--queue NAME] [--prefix P] (TASK_ID | --all)

``--store`` is a ``postgresql://`` URL or the path of the embedded SQLite file
(``sqlite:///`` prefix optional). ``dead`` prints one tab-separated line per
dead-letter entry: task id, tenant, kind, status, attempts, and the type of
the last error (never its text, which may quote a task's input). ``replay``
prints the ids it put back on the queue; it exits 1 when a named task was not
dead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import redis.asyncio as aioredis

from sluicegate_orchestrator.client import Orchestrator
from sluicegate_orchestrator.model import DEFAULT_QUEUE
from sluicegate_orchestrator.queue import DEFAULT_PREFIX
from sluicegate_orchestrator.store import TaskStore
from sluicegate_orchestrator.store_postgres import PostgresTaskStore
from sluicegate_orchestrator.store_sqlite import SqliteTaskStore

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_STORE = "sluicegate-tasks.sqlite"


def open_store(url: str) -> TaskStore:
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresTaskStore(url)
    return SqliteTaskStore(url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluicegate-orchestrator", description="Dead tasks: list them, replay them.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("dead", "list the dead-letter stream"), ("replay", "move dead tasks back to the queue")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--redis", default=DEFAULT_REDIS, help=f"Redis URL (default {DEFAULT_REDIS})")
        sub.add_argument("--store", default=DEFAULT_STORE, help="postgresql:// URL or SQLite path")
        sub.add_argument("--queue", default=DEFAULT_QUEUE)
        sub.add_argument("--prefix", default=DEFAULT_PREFIX, help="Redis key prefix")
        if name == "replay":
            which = sub.add_mutually_exclusive_group(required=True)
            which.add_argument("task_id", nargs="?")
            which.add_argument("--all", action="store_true", help="every dead task on the queue")
    return parser


async def _run(args: argparse.Namespace) -> int:
    redis = aioredis.from_url(args.redis)
    store = open_store(args.store)
    orchestrator = Orchestrator(store, redis, prefix=args.prefix)
    try:
        if args.command == "dead":
            for dead in await orchestrator.dead(args.queue):
                task = dead.task
                if task is None:
                    print(f"{dead.entry.task_id}\t{dead.entry.tenant}\t-\tmissing\t-\t-")
                    continue
                error_type = (task.error or "-").split(":", 1)[0]
                print(f"{task.id}\t{task.tenant}\t{task.kind}\t{task.status}\t{task.attempts}\t{error_type}")
            return 0
        replayed = await orchestrator.replay(args.queue, None if args.all else args.task_id)
        for task_id in replayed:
            print(task_id)
        print(f"replayed {len(replayed)} task(s)", file=sys.stderr)
        return 0 if replayed or args.all else 1
    finally:
        await store.close()
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
