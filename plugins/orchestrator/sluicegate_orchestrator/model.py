"""The task record, what a caller asks for, and the orchestrator's errors.

A task's ``input`` and ``result`` are JSON values (what msgspec decodes JSON
to); they live in the store, never in a log line. Times are seconds since the
epoch from the clock the caller injects, so that leases, retries and tests
agree on one clock.
"""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import msgspec

from core.errors import GatewayError, InvalidRequest

if TYPE_CHECKING:
    Json: TypeAlias = "None | bool | int | float | str | list[Json] | dict[str, Json]"
else:
    # msgspec resolves field types at run time and takes no recursive alias: any JSON value there.
    Json = Any
TaskStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "dead"]
STATUSES: tuple[TaskStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled", "dead")
# No run will change these; ``dead`` only through a replay.
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "dead"})
DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 5

_ID = re.compile(r"^task_[0-9a-f]{24}$")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_KEY_MAX = 255


class Task(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    kind: str
    queue: str
    input: Json
    status: TaskStatus
    attempts: int  # runs started (a run that waited on children and yielded does not count)
    max_attempts: int
    trace_id: str
    created_at: float
    updated_at: float
    idempotency_key: str | None = None
    parent_id: str | None = None
    result: Json = None
    error: str | None = None
    cancel_requested: bool = False
    not_before: float | None = None  # a delayed retry is not run before this time
    lease_owner: str | None = None  # the worker running it, while running
    lease_until: float | None = None
    failed_children: list[str] = msgspec.field(default_factory=list)
    finished_at: float | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL


class NewTask(msgspec.Struct, frozen=True, kw_only=True):
    """What a caller asks for; the store gives it an id, times and status ``queued``."""

    tenant: str
    kind: str
    input: Json = None
    queue: str = DEFAULT_QUEUE
    idempotency_key: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    parent_id: str | None = None
    trace_id: str | None = None


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A step of a task: its memoised result once done, its failures before that."""

    name: str
    state: Literal["pending", "done", "compensated"]
    result: Json = None
    failures: int = 0


class TaskStoreUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "task_store_unavailable"
    retryable = True


class Permanent(Exception):
    """Raised by a handler or a step: no retry will help; the saga compensates and the task fails."""


class TaskCancelled(BaseException):
    """The task was cancelled; raised at the next step boundary.

    A ``BaseException``, as ``asyncio.CancelledError`` is, so that a handler's
    ``except Exception`` around a step does not swallow it.
    """


def new_task_id() -> str:
    return f"task_{secrets.token_hex(12)}"


def new_trace_id() -> str:
    return secrets.token_hex(16)  # W3C trace-id: 32 lower-case hex digits


def valid_task_id(task_id: str) -> bool:
    return _ID.match(task_id) is not None


def check_new(new: NewTask) -> None:
    """Refuse what no store should keep; messages name the field, never its value."""
    if not new.tenant or len(new.tenant) > 128:
        raise InvalidRequest("tenant must be 1 to 128 characters", param="tenant")
    if not _NAME.match(new.kind):
        raise InvalidRequest("kind must be 1 to 128 letters, digits or '_.:-'", param="kind")
    if not _NAME.match(new.queue):
        raise InvalidRequest("queue must be 1 to 128 letters, digits or '_.:-'", param="queue")
    if new.idempotency_key is not None and not 0 < len(new.idempotency_key) <= _KEY_MAX:
        raise InvalidRequest(f"idempotency key must be 1 to {_KEY_MAX} characters", param="idempotency_key")
    if not 1 <= new.max_attempts <= 100:
        raise InvalidRequest("max_attempts must be between 1 and 100", param="max_attempts")
    if new.trace_id is not None and re.fullmatch(r"[0-9a-f]{32}", new.trace_id) is None:
        raise InvalidRequest("trace_id must be 32 lower-case hex digits", param="trace_id")


def error_text(exc: BaseException) -> str:
    """What a task records of a failure (kept in the store, shown to the tenant; never logged)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:1997] + "..."
