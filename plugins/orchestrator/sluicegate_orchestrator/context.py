"""What a handler sees of its task: named steps memoised in the store, child tasks, compensations.

Delivery is at least once, so a handler may run again for the same task (a
worker died, a step failed and is retried, a parent woke up to look at its
children). Every effect belongs in a step: ``await ctx.step("charge", fn,
compensate=refund)`` runs ``fn(key)`` once, records its JSON result, and on
every later run returns the recorded result without calling ``fn``. ``key``
(``ctx.key(name)``: task id and step name) is stable across runs, for effects
that are themselves idempotent on a key (an LLM call through the gateway, a
payment). Step names are unique within a task.

Sagas: a step's ``compensate(result)`` is registered whether the step ran now
or was recalled, so when the task later fails for good (``Permanent``, a
cancel) the compensations of every completed step run newest first, each
recorded as it completes so a crash mid-way does not run one twice. A cancel
is seen before each step that has not completed (and before ``wait``); a run
asked to stop replays its completed steps, registering their compensations,
and stops at the first that has not.

Children: ``spawn`` creates a child task (same tenant and trace id; its
creation is itself a step, so it happens once) and ``wait`` returns the
children's outcomes once all are final. Until then the run yields: the task
goes back to ``queued`` without spending an attempt and runs again when a
child finishes. A failed child stays local: ``wait`` records it on the parent
(``failed_children``) and returns it among the outcomes; the parent decides
to raise (``fail_on_child_failure=True`` raises ``ChildFailed``) or to go on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar, cast

import msgspec

from sluicegate_orchestrator import store_sql
from sluicegate_orchestrator.model import Json, Permanent, StepRecord, Task, TaskCancelled

if TYPE_CHECKING:
    from sluicegate_orchestrator.client import Orchestrator

StepFn = Callable[[str], Awaitable[Json]]
Compensation = Callable[[Json], Awaitable[None]]
S = TypeVar("S", bound=msgspec.Struct)
HANDLER_STEP = ""  # failures outside any step are counted under this name


class ChildOutcome(msgspec.Struct, frozen=True):
    id: str
    kind: str
    status: str
    result: Json = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


class ChildFailed(Permanent):
    def __init__(self, failed: list[ChildOutcome]) -> None:
        super().__init__(f"{len(failed)} child task(s) did not succeed: {', '.join(c.id for c in failed)}")
        self.failed = failed


class Yield(BaseException):
    """Raised through the handler by ``wait`` while a child is unfinished; the worker requeues the task.

    A ``BaseException`` so that a handler's ``except Exception`` does not swallow it.
    """

    def __init__(self, waiting_on: list[str]) -> None:
        super().__init__(f"waiting on {len(waiting_on)} child task(s)")
        self.waiting_on = waiting_on


class _Done(msgspec.Struct, frozen=True):
    name: str
    compensate: Compensation
    result: Json
    compensated: bool


class StepContext:
    def __init__(self, orchestrator: Orchestrator, task: Task) -> None:
        self.task = task
        self._orchestrator = orchestrator
        self._store = orchestrator.store
        self._steps: dict[str, StepRecord] | None = None  # read at the first step: a handler without steps costs no read
        self._seen: set[str] = set()
        self._done: list[_Done] = []
        self.current_step = HANDLER_STEP  # the step an escaping exception came from

    @property
    def tenant(self) -> str:
        return self.task.tenant

    @property
    def trace_id(self) -> str:
        return self.task.trace_id

    @property
    def input(self) -> Json:
        return self.task.input

    def input_as(self, type_: type[S]) -> S:
        """The input converted to a Struct (``msgspec.ValidationError`` is a ``Permanent`` failure)."""
        try:
            return msgspec.convert(self.task.input, type_)
        except msgspec.ValidationError as exc:
            raise Permanent(f"input does not match {type_.__name__}: {exc}") from None

    def key(self, name: str) -> str:
        """The idempotency key of a step: the same on every run of this task."""
        return f"{self.task.id}:{name}"

    async def _memo(self) -> dict[str, StepRecord]:
        if self._steps is None:
            self._steps = await self._store.steps(self.task.tenant, self.task.id)
        return self._steps

    async def check_cancelled(self) -> None:
        current = await self._store.get(self.task.tenant, self.task.id)
        if current is None or current.cancel_requested or current.status == "cancelled":
            raise TaskCancelled(self.task.id)

    async def step(self, name: str, fn: StepFn, *, compensate: Compensation | None = None) -> Json:
        if name in self._seen:
            raise Permanent(f"step {name!r} appears twice in one task")
        self._seen.add(name)
        record = (await self._memo()).get(name)
        if record is not None and record.state != "pending":
            result = record.result
        else:
            await self.check_cancelled()
            self.current_step = name
            # what the step returns --> what a later run will recall: the same JSON either way
            result = as_json(await fn(self.key(name)), f"step {name!r}")
            await self._store.save_step(self.task.tenant, self.task.id, name, result, now=self._orchestrator.clock())
            self.current_step = HANDLER_STEP
        if compensate is not None:
            compensated = record is not None and record.state == "compensated"
            self._done.append(_Done(name, compensate, result, compensated))
        return result

    async def spawn(self, name: str, kind: str, input: Json = None, *, queue: str | None = None, max_attempts: int | None = None) -> str:
        """Creates (once) a child task; returns its id."""
        task = self.task

        async def create(_key: str) -> Json:
            child, _ = await self._orchestrator.create(
                task.tenant, kind, input, idempotency_key=f"child:{task.id}:{name}", queue=queue or task.queue,
                max_attempts=max_attempts or task.max_attempts, trace_id=task.trace_id, parent_id=task.id,
            )  # fmt: skip
            return child.id

        return str(await self.step(f"spawn:{name}", create))

    async def wait(self, child_ids: Sequence[str], *, fail_on_child_failure: bool = False) -> list[ChildOutcome]:
        name = "wait:" + ",".join(child_ids)
        record = (await self._memo()).get(name)
        if record is not None and record.state != "pending":
            outcomes = msgspec.convert(record.result, list[ChildOutcome])
        else:
            outcomes = await self._look(child_ids)
            await self.step(name, _constant(cast(Json, msgspec.to_builtins(outcomes))))
        failed = [o for o in outcomes if not o.ok]
        if failed and fail_on_child_failure:
            raise ChildFailed(failed)
        return outcomes

    async def _look(self, child_ids: Sequence[str]) -> list[ChildOutcome]:
        await self.check_cancelled()
        outcomes: list[ChildOutcome] = []
        waiting: list[str] = []
        for child_id in child_ids:
            child = await self._store.get(self.task.tenant, child_id)
            if child is None:
                outcomes.append(ChildOutcome(child_id, "", "failed", error="no such task"))
            elif not child.final:
                waiting.append(child_id)
            else:
                outcomes.append(ChildOutcome(child.id, child.kind, child.status, child.result, child.error))
        if waiting:
            raise Yield(waiting)
        for outcome in outcomes:
            if not outcome.ok:
                await self._store.record_failed_child(self.task.tenant, self.task.id, outcome.id, now=self._orchestrator.clock())
        return outcomes

    async def compensate(self) -> list[str]:
        """Undo completed steps newest first; returns the names of compensations that failed."""
        failed: list[str] = []
        for done in reversed(self._done):
            if done.compensated:
                continue
            try:
                await done.compensate(done.result)
            except Exception:  # noqa: BLE001 - recorded on the task; the other compensations still run
                failed.append(done.name)
                continue
            await self._store.mark_compensated(self.task.tenant, self.task.id, done.name, now=self._orchestrator.clock())
        return failed


def as_json(value: Json, what: str) -> Json:
    """The value as a later run will recall it (JSON round trip); what JSON cannot hold is a ``Permanent`` failure."""
    try:
        return store_sql.decode(store_sql.encode(value))
    except (TypeError, msgspec.EncodeError) as exc:
        raise Permanent(f"{what} is not JSON: {type(exc).__name__}") from None


def _constant(value: Json) -> StepFn:
    async def fn(_key: str) -> Json:
        return value

    return fn
