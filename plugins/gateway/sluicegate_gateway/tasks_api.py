"""The task API under /api/v1/tasks, for the caller's own tenant only.

Callers authenticate as on the gateway's own routes (``Authorization: Bearer``:
an API key or a JWT). Scopes: reading (``GET``) needs ``tenant:read``,
``tenant:write`` or an ``ops:`` scope granting ``ops:read``; creating and
cancelling need ``tenant:write`` or one granting ``ops:write`` (``ops:*``
grants both). An ops key acts on its own tenant here, like any other: another
tenant's task is 404, exactly as a missing one.

- ``POST /api/v1/tasks`` ``{"kind": ..., "input": ...}`` (kind from ``task_kinds``):
  201 and the task; with an ``Idempotency-Key`` header a repeat gets the same
  task back with 200 (a repeat asking for another kind or input: 409).
- ``GET /api/v1/tasks/{id}``; ``GET /api/v1/tasks?after=&limit=&status=``
  (newest first; ``after`` a task id of the previous page; ``limit`` 1 to 100).
- ``POST /api/v1/tasks/{id}/cancel``: the task (a final one unchanged).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import cast, get_args
from urllib.parse import parse_qs

import msgspec
from sluicegate_orchestrator import Json, Orchestrator, Task, TaskStatus

from core.errors import GatewayError, InvalidRequest, MethodNotAllowed, NotFound, PermissionDenied
from core.principal import Principal
from sluicegate_gateway.http import Answer, json_answer

PREFIX = "/api/v1/tasks"
READ, WRITE = "tenant:read", "tenant:write"
_STATUSES: frozenset[str] = frozenset(get_args(TaskStatus))
_FIELD = re.compile(r"at `\$\.([^`]+)`|field `([^`]+)`")
_KEY_MAX = 200  # the orchestrator's limit is 255; the "api:" namespace is added to it


class TaskBody(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    input: Json = None


class TaskView(msgspec.Struct, kw_only=True):
    """A task as its tenant sees it (no leases, no tenant)."""

    id: str
    object: str
    kind: str
    status: str
    input: Json
    result: Json
    error: str | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    trace_id: str
    idempotency_key: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    # A child task's parent; a parent's children that did not succeed.
    parent_id: str | None = None
    failed_children: list[str] = msgspec.field(default_factory=list)


class IdempotencyConflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "idempotency_key_reused"


def view(task: Task) -> TaskView:
    key = task.idempotency_key
    return TaskView(
        id=task.id, object="task", kind=task.kind, status=task.status, input=task.input, result=task.result, error=task.error,
        attempts=task.attempts, max_attempts=task.max_attempts, cancel_requested=task.cancel_requested, trace_id=task.trace_id,
        idempotency_key=key.removeprefix("api:") if key is not None else None, created_at=task.created_at,
        updated_at=task.updated_at, finished_at=task.finished_at, parent_id=task.parent_id, failed_children=list(task.failed_children),
    )  # fmt: skip


def _decode_body(body: bytes) -> TaskBody:
    try:
        return msgspec.json.decode(body, type=TaskBody)
    except msgspec.ValidationError as exc:
        # msgspec names the field: "... - at `$.kind`", "missing required field `kind`", "unknown field `x`".
        message = str(exc)
        found = _FIELD.search(message)
        param = (found.group(1) or found.group(2)) if found is not None else "body"
        raise InvalidRequest(f"Invalid task: {message.replace('$.', '')}.", param=param) from None
    except msgspec.DecodeError:
        raise InvalidRequest("The request body is not valid JSON.", param="body") from None


class TasksApi:
    def __init__(
        self, orchestrator: Orchestrator, authenticate: Callable[[str | None], Awaitable[Principal]], *, kinds: tuple[str, ...], queue: str
    ) -> None:
        self._orchestrator = orchestrator
        self._authenticate = authenticate
        self._kinds = kinds
        self._queue = queue

    async def handle(self, method: str, path: str, query: bytes, headers: Mapping[str, bytes], body: Callable[[], Awaitable[bytes]],
                     trace_id: str) -> Answer:  # fmt: skip
        parts = [p for p in path.removeprefix(PREFIX).split("/") if p]
        if len(parts) > 2 or (len(parts) == 2 and parts[1] != "cancel"):
            raise NotFound(f"Unknown request URL: {method} {path}.")
        allowed = "POST" if len(parts) == 2 else ("GET, POST" if not parts else "GET")
        if method not in allowed.split(", "):
            raise MethodNotAllowed(f"{method} is not allowed here; use {allowed}.")
        principal = await self._authenticate(_text(headers.get("authorization")))
        tenant = principal.tenant
        if method == "GET":
            self._require(principal, write=False)
            if parts:
                return json_answer(200, view(await self._found(await self._orchestrator.get(tenant, parts[0]), parts[0])))
            return await self._list(tenant, query)
        self._require(principal, write=True)
        if parts:
            return json_answer(200, view(await self._found(await self._orchestrator.cancel(tenant, parts[0]), parts[0])))
        return await self._create(tenant, headers, await body(), trace_id)

    @staticmethod
    def _require(principal: Principal, *, write: bool) -> None:
        if write:
            if not (principal.has_scope(WRITE) or principal.has_scope("ops:write")):
                raise PermissionDenied("This key may not create or cancel tasks: it needs the `tenant:write` scope.")
        elif not any(principal.has_scope(s) for s in (READ, WRITE, "ops:read")):
            raise PermissionDenied("This key may not read tasks: it needs the `tenant:read` scope.")

    @staticmethod
    async def _found(task: Task | None, task_id: str) -> Task:
        if task is None:
            raise NotFound(f"No task {task_id!r}.", code="task_not_found")
        return task

    async def _list(self, tenant: str, query: bytes) -> Answer:
        args = {k: v[-1] for k, v in parse_qs(query.decode("latin-1"), keep_blank_values=True).items()}
        unknown = sorted(set(args) - {"after", "limit", "status"})
        if unknown:
            raise InvalidRequest(f"Unknown query parameter `{unknown[0]}`; use after, limit, status.", param=unknown[0])
        limit_text = args.get("limit", "20")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            raise InvalidRequest("limit must be an integer from 1 to 100.", param="limit")
        status = args.get("status")
        if status is not None and status not in _STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(sorted(_STATUSES))}.", param="status")
        wanted = cast("TaskStatus | None", status)
        tasks, more = await self._orchestrator.list_tasks(tenant, after=args.get("after") or None, limit=int(limit_text), status=wanted)
        page = [view(t) for t in tasks]
        return json_answer(200, {"object": "list", "data": page, "has_more": more, "last_id": page[-1].id if page else None})

    async def _create(self, tenant: str, headers: Mapping[str, bytes], body: bytes, trace_id: str) -> Answer:
        wanted = _decode_body(body)
        if wanted.kind not in self._kinds:
            raise InvalidRequest(f"kind must be one of {', '.join(self._kinds)}.", param="kind")
        key = _text(headers.get("idempotency-key"))
        if key is not None and not (0 < len(key) <= _KEY_MAX and key.isprintable()):
            raise InvalidRequest(f"Idempotency-Key must be 1 to {_KEY_MAX} printable characters.", param="Idempotency-Key")
        task, created = await self._orchestrator.create(
            tenant, wanted.kind, wanted.input, idempotency_key=f"api:{key}" if key is not None else None, queue=self._queue,
            trace_id=trace_id,
        )  # fmt: skip
        if not created and (task.kind != wanted.kind or task.input != wanted.input):
            raise IdempotencyConflict("This Idempotency-Key was used for a different task.", param="Idempotency-Key")
        return json_answer(201 if created else 200, view(task))


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
