"""The ``gateway`` plugin: SCM webhooks and the task API in front of the orchestrator.

Enable it in the live config::

    state: {redis_url: redis://127.0.0.1:6379/0}   # required: the orchestrator's queue and the delivery ids
    plugins:
      - name: gateway
        options:
          store: {env: TASKS_DSN}                  # or a SQLite path; default: the orchestrator plugin's tasks.sqlite
          repositories:
            - {provider: github, repository: acme/api, tenant: acme, secret: {env: ACME_GITHUB_SECRET}}
            - {provider: gitlab, repository: acme/platform/api, tenant: acme, secret: {file: /run/secrets/gitlab}}
            - {provider: ado, repository: acme/Payments/api, tenant: acme, secret: {env: ACME_ADO_SECRET}}

``start`` resolves every secret (one that does not resolve refuses the start,
naming the key, never the value), opens the task store and a Redis client;
``close`` releases them. Routes: ``/webhooks/...`` (``webhooks``) and
``/api/v1/tasks...`` (``tasks_api``); anything else under those prefixes is 404.
"""

from __future__ import annotations

import os
from typing import Any

import redis.asyncio as aioredis
from sluicegate_orchestrator import Orchestrator, TaskStore
from sluicegate_orchestrator.cli import open_store

from core.config import ConfigError
from core.errors import GatewayError, InternalError, MethodNotAllowed, NotFound, Overloaded
from core.plugin import ASGIApp, Plugin, Services
from sluicegate_gateway.dedup import DeliveryLog
from sluicegate_gateway.http import Answer, Receive, Send, error_answer, headers_of, read_body, send_answer, trace_id
from sluicegate_gateway.options import PROVIDERS, bindings, default_store_dir, store_url
from sluicegate_gateway.options import Options as GatewayOptions
from sluicegate_gateway.tasks_api import PREFIX as TASKS_PREFIX
from sluicegate_gateway.tasks_api import TasksApi
from sluicegate_gateway.webhooks import Webhooks

WEBHOOKS_PREFIX = "/webhooks"
# Every Redis call has a deadline: a Redis that hangs answers 503, never holds a request.
REDIS_TIMEOUT_S = 2.0


class GatewayPlugin(Plugin):
    name = "gateway"
    api_version = 1
    Options = GatewayOptions
    http_prefix = (WEBHOOKS_PREFIX, TASKS_PREFIX)

    def __init__(self, options: GatewayOptions, services: Services) -> None:
        super().__init__(options, services)
        self.options: GatewayOptions = options
        self._redis: aioredis.Redis | None = None
        self._store: TaskStore | None = None
        self._webhooks: Webhooks | None = None
        self._tasks: TasksApi | None = None

    async def start(self) -> None:
        resolved = bindings(self.options)
        redis_url = self.services.redis_url
        if not redis_url:
            raise ConfigError("plugin gateway: key `state.redis_url` must be set: the task queue and webhook delivery ids live in Redis")
        url = store_url(self.options, self.services.data_dir)
        if self.options.store is None:
            os.makedirs(default_store_dir(self.services.data_dir), exist_ok=True)
        self._redis = aioredis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        self._store = open_store(url)
        orchestrator = Orchestrator(self._store, self._redis, prefix=self.options.redis_prefix)
        deliveries = DeliveryLog(self._redis, self.options.redis_prefix, self.options.dedup_ttl_s)
        self._webhooks = Webhooks(
            resolved,
            deliveries,
            orchestrator,
            queue=self.options.queue,
            replay_window_s=self.options.replay_window_s,
            log=self.services.log,
        )
        self._tasks = TasksApi(orchestrator, self.services.authenticate, kinds=self.options.task_kinds, queue=self.options.queue)
        self.services.log.info(
            "gateway plugin: %d repositories, task store %s",
            len(self.options.repositories),
            "postgres" if url.startswith("postgres") else "sqlite",
        )

    async def close(self) -> None:
        self._webhooks = self._tasks = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def asgi(self) -> ASGIApp:
        return self._serve

    async def _serve(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            return
        try:
            answer = await self._answer(scope, receive)
        except GatewayError as exc:
            answer = error_answer(exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must not become a stack trace for the caller
            self.services.log.error("gateway plugin failed on %s: %s", scope.get("path"), type(exc).__name__)
            answer = error_answer(InternalError("The gateway failed to process the request."))
        await send_answer(send, answer)

    async def _answer(self, scope: Any, receive: Receive) -> Answer:
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        headers = headers_of(scope)
        webhooks, tasks = self._webhooks, self._tasks
        if webhooks is None or tasks is None:
            raise Overloaded("The gateway plugin is not started.", retry_after=1)
        limit = self.options.max_body_bytes
        if path == TASKS_PREFIX or path.startswith(TASKS_PREFIX + "/"):
            query: bytes = scope.get("query_string", b"")
            return await tasks.handle(method, path, query, headers, lambda: read_body(receive, headers, limit), trace_id(headers))
        provider = path.removeprefix(WEBHOOKS_PREFIX + "/").rstrip("/")
        if provider not in PROVIDERS:
            raise NotFound(f"Unknown request URL: {method} {path}.")
        if method != "POST":
            raise MethodNotAllowed(f"{method} is not allowed here; use POST.")
        body = await read_body(receive, headers, limit)
        return await webhooks.deliver(provider, headers, body, trace_id(headers))
