"""The access log: one JSON line per request on the ``sluicegate.access`` logger.

A request that went through the pipeline is logged by ``record``, a
``Billing.after_answer`` hook, once its cost is known and it is answered
(``router.afterwards``): answered, failed, cut off by its budget or abandoned
by its client, each exactly once. A request refused before the pipeline (no
key, a wrong key, a body that does not decode, an unknown URL) is logged with
what is known then: route, status, error code.

Refusals are seen by ``after_exception``, a Litestar hook called with every
exception an exception handler answers, whichever surface's handler that is.
A failure in the pipeline is raised to the route too, after the pipeline
logged it: ``before_request`` gives every routed request a ``_Seen`` cell,
kept in the scope (for ``after_exception``) and in a context variable (for
``recorded``, which sees no scope, and may run in a settlement task the
request started: a copy of its context, holding the same cell), and
``recorded``, a ``Billing.after_record`` hook that runs before the answer,
marks it. Hooks, not a middleware: any middleware makes Litestar wrap every
route's ``send``, a cost on each streamed chunk.

Values are ids, names, numbers and codes the gateway chose: never a path, a
header, a key, a prompt or an error message. ``cost_usd`` is a decimal string
of US dollars, exact to the pico-dollar the ledger counts in.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException

from core.errors import HTTP_STATUS_ERRORS, GatewayError
from router.log_writer import BackgroundStreamHandler
from router.logs import JsonFormatter

if TYPE_CHECKING:
    from litestar.types import Scope

    from router.context import RequestContext

log = logging.getLogger("sluicegate.access")
_INFO = logging.INFO
_PICO = 10**12
# The scope key ``before_request`` keeps a request's cell under.
_SCOPE_KEY = "sluicegate.access"
# The route of a request no route matched (or that never reached the router).
_NO_ROUTE = "-"


class _Seen:
    """One routed request: when it began, and whether the pipeline recorded (and so logged) it."""

    __slots__ = ("recorded", "started")

    def __init__(self) -> None:
        self.recorded = False
        self.started = time.perf_counter()


_current: ContextVar[_Seen | None] = ContextVar("sluicegate_access", default=None)


def usd(pico: int) -> str:
    """Pico-dollars as an exact decimal string of dollars: 1_230_000 --> ``"0.00000123"``."""
    sign = "-" if pico < 0 else ""
    whole, fraction = divmod(abs(pico), _PICO)
    if not fraction:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:012d}".rstrip("0")


class _Line(msgspec.Struct, gc=False):
    """An access line as ``JsonFormatter`` writes a record: its four standard keys, then the fields."""

    ts: float
    level: str
    logger: str
    msg: str
    trace_id: str | None
    request_id: str | None
    tenant: str | None
    key_id: str | None
    model: str | None
    deployment: str | None
    route: str
    status: int
    error: str | None
    stream: bool | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: str | None
    latency_ms: float | None
    ttft_ms: float | None
    config_version: int | None
    canary: str | None
    route_reason: str | None


_encode_line = msgspec.json.Encoder().encode
_FIELDS = _Line.__struct_fields__[4:]


def recorded(ctx: RequestContext) -> None:
    """``Billing.after_record`` hook: the pipeline finished this request, and ``record`` logs it (never raises)."""
    seen = _current.get()
    if seen is not None:
        seen.recorded = True


def record(ctx: RequestContext) -> None:
    """``Billing.after_answer`` hook: the line of a request the pipeline finished (never raises)."""
    if not log.isEnabledFor(_INFO):
        return
    usage, ttft = ctx.usage, ctx.ttft
    _emit(
        _Line(
            round(time.time(), 6), "info", _NAME, "request",
            ctx.trace_id, ctx.request_id, ctx.principal.tenant, ctx.principal.key_id, ctx.alias, ctx.deployment or None,
            ctx.route, ctx.status, ctx.error, ctx.stream,
            usage.prompt_tokens if usage is not None else None, usage.completion_tokens if usage is not None else None,
            usd(ctx.cost), round(ctx.elapsed * 1000, 3), round(ttft * 1000, 3) if ttft is not None else None,
            ctx.snapshot.version, ("mirrored" if ctx.mirror else ctx.arm) if ctx.arm is not None else None, ctx.route_reason,
        )
    )  # fmt: skip


def _refused(route: str, status: int, error: str | None, latency_s: float | None) -> None:
    if not log.isEnabledFor(_INFO):
        return
    latency = round(latency_s * 1000, 3) if latency_s is not None else None
    _emit(
        _Line(
            round(time.time(), 6), "info", _NAME, "request", None, None, None, None, None, None,
            route, status, error, None, None, None, None, latency, None, None, None, None,
        )
    )  # fmt: skip


_NAME = log.name
# A record's standard attributes, the same for every line. LogRecord() looks up the
# process, thread, task and source file of each record (and Logger.info the caller's
# frame): most of what a line would cost, for attributes no line shows.
_TEMPLATE = logging.LogRecord(log.name, _INFO, __file__, 0, "request", (), None).__dict__
_TEMPLATE.update(dict.fromkeys(("process", "processName", "thread", "threadName", "taskName") & _TEMPLATE.keys()))
# What ``relativeCreated`` counts from, as LogRecord() reads it.
_LOGGING_STARTED: float = getattr(logging, "_startTime", time.time())
_root = logging.getLogger()


class _Record(logging.LogRecord):
    """An access line as a ``LogRecord`` whose fields are attributes of their own, as ``extra=`` makes them."""

    def __init__(self, line: _Line) -> None:  # noqa: PLW0231 - LogRecord.__init__ is the cost spared
        d = self.__dict__
        d.update(_TEMPLATE)
        for name in _FIELDS:
            d[name] = getattr(line, name)
        now = line.ts
        self.created = now
        self.msecs = (now - int(now)) * 1000
        self.relativeCreated = (now - _LOGGING_STARTED) * 1000


def _emit(line: _Line) -> None:
    """Straight to the writer's queue when the only listener is the JSON handler ``router.logs`` installs; else as a record."""
    handlers = _root.handlers
    if len(handlers) == 1 and not log.handlers and log.propagate and not log.disabled and not log.filters and not _root.filters:
        handler = handlers[0]
        if type(handler) is BackgroundStreamHandler and type(handler.formatter) is JsonFormatter and not handler.filters:
            if _INFO >= handler.level:
                handler.enqueue(_encode_line(line).decode() + "\n")
            return
    log.handle(_Record(line))


def status_and_code(exc: BaseException) -> tuple[int, str | None]:
    """How an exception is answered: its status and OpenAI error code."""
    if isinstance(exc, GatewayError):
        return exc.status, exc.code
    if isinstance(exc, HTTPException):
        cls = HTTP_STATUS_ERRORS.get(exc.status_code)
        return exc.status_code, cls.code if cls is not None else None
    return 500, "internal_error"


def refused_unparsed(exc: GatewayError) -> None:
    """From the HTTP server: log a request its parser refused (the application never saw it)."""
    _refused(_NO_ROUTE, exc.status, exc.code, None)


async def before_request(request: Request[Any, Any, Any]) -> None:
    """Litestar ``before_request`` hook: the cell that tells a refusal from a failure the pipeline logged."""
    begin(request.scope)


def begin(scope: Scope) -> None:
    """The cell of a routed request, in its scope and its task's context (``router.fast_routes`` calls it directly)."""
    seen = _Seen()
    scope[_SCOPE_KEY] = seen  # type: ignore[literal-required]
    _current.set(seen)  # this request's task, and the tasks it starts (settlement, a stream's relay)


async def after_exception(exc: Exception, scope: Scope) -> None:
    """Litestar ``after_exception`` hook: log a request answered with an error the pipeline did not record.

    No cell: the router refused it (no route, a wrong method) before any route handler saw it.
    """
    seen: _Seen | None = scope.get(_SCOPE_KEY)  # type: ignore[assignment]
    if seen is not None and seen.recorded:
        return
    status, code = status_and_code(exc)
    _refused(scope.get("path_template") or _NO_ROUTE, status, code, time.perf_counter() - seen.started if seen is not None else None)
