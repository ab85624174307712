"""The plugin interface: what a plugin may do to the gateway, and what the gateway offers it.

A plugin is a Python distribution that names a ``Plugin`` subclass under the
entry-point group ``sluicegate.plugins``; the config's ``plugins:`` list
enables it by that entry-point name, with its options and a failure policy.
The gateway builds one instance per enabled entry (``Plugin(options,
services)``) when a config version enables it or changes its entry, starts it
before that version serves, and closes it once a version no longer has it.

Hooks are methods a subclass overrides; one it does not override is never
called, so a hook no plugin uses costs nothing. In pipeline order:

- ``after_auth(request)``: the caller is known and the body decoded, nothing
  else has run (before PII, routing and limits);
- ``before_route(request)``: after the PII step (``request.body`` is what the
  model would get), before the alias is planned and admitted;
- ``before_serve(request)``: admitted (limits and budget reserved,
  ``request.plan`` known), before the first upstream attempt;
- ``on_chunk(request, data)``: each streamed chunk (an OpenAI chat or
  completion chunk's JSON) before it is framed for the client; return new
  bytes to replace it or None to keep it. Synchronous: it runs per chunk;
- ``after_settle(request)``: the request is finished and settled (status,
  usage, cost and deployment final); runs after the client has its answer;
- ``on_ledger_row(row)``: each ledger row as it is written (a ``dict``).

The first three may end the request: return a ``Reply`` (answered as if a
model had: a chat completion or completion body, rendered by the route's own
surface, streamed when the client asked for a stream) or raise ``Refusal``
(an error in the route's own error shape). They may also change
``request.body`` (a guardrail rewriting a prompt). Anything else a hook
raises, or a hook running past ``timeout_s``, is the plugin's failure: with
``on_error: fail_open`` it is logged and counted and the request goes on;
with ``fail_closed`` the request ends with 503 ``plugin_failed``.

A plugin may also serve HTTP routes under its own ``http_prefix`` (one or
several; an ASGI app from ``asgi()``), offer task handlers to an orchestrator
plugin (``task_handlers()``), offer engines (deployments with ``provider: plugin``
and ``options.engine`` naming one), offer guardrails (a ``guardrails:`` entry
with ``kind: plugin`` and ``plugin`` naming one: ``guardrail_names`` and
``guardrails()``, objects shaped as ``policies.guardrails_types.Guardrail``),
and run a background ``worker()``. A plugin that fronts tool servers (the MCP
gateway) may offer them to the Responses API's ``mcp`` tools through
``tool_provider()``: the gateway lists and calls them as the request's caller,
and the plugin applies its own grants, limits, PII, guardrails and audit.
A plugin may add pages to the admin console (``console_panels()``: tables,
filters and actions, ``core.console_panel``), rendered at ``/ui/plugins/<name>``.
``api_version`` is the interface a plugin was built for; a gateway refuses
at start (and at every config check) a plugin whose version it does not
speak, naming both.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgspec

from core.console_panel import ConsolePanel
from core.errors import GatewayError

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer
    from prometheus_client import CollectorRegistry

    from core.config import TenantConfig
    from core.principal import Principal

# The interface this gateway speaks; a plugin declares the one it was built for.
API_VERSION = 1
SUPPORTED_API_VERSIONS = frozenset({1})
ENTRY_POINT_GROUP = "sluicegate.plugins"
# The hooks, in pipeline order: the names a plugin overrides and metrics label.
HOOKS = ("after_auth", "before_route", "before_serve", "on_chunk", "after_settle", "on_ledger_row")

# An ASGI application: how a plugin serves its routes.
ASGIApp = Callable[[Mapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class NoOptions(msgspec.Struct, forbid_unknown_fields=True):
    """The options of a plugin that takes none."""


class Reply(msgspec.Struct):
    """A hook's answer in place of a model's: an OpenAI chat completion (or completion) body."""

    body: dict[str, Any]


class Refusal(GatewayError):
    """A hook's refusal: answered in the route's own error shape with this status and code."""

    def __init__(self, message: str, *, status: int = 400, code: str = "plugin_refused", type: str = "invalid_request_error") -> None:
        super().__init__(message, code=code)
        self.status = status
        self.type = type


class HookRequest(Protocol):
    """What a hook sees of a request (the gateway's request record): read it; change ``body`` only."""

    body: dict[str, Any]
    # Per-request scratch space for plugins (None until a plugin sets it).
    plugin_state: dict[str, Any] | None

    @property
    def request_id(self) -> str: ...
    @property
    def principal(self) -> Principal: ...
    @property
    def kind(self) -> str: ...
    @property
    def route(self) -> str: ...
    @property
    def alias(self) -> str: ...
    @property
    def stream(self) -> bool: ...
    @property
    def deployment(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def error(self) -> str | None: ...
    @property
    def cost(self) -> int: ...
    @property
    def elapsed(self) -> float: ...


class Completed(msgspec.Struct):
    """A model call a plugin made through the gateway: the status, the response (or error) body, the request id."""

    status: int
    body: bytes
    request_id: str


class PiiScan(msgspec.Struct):
    """Texts as a tenant's PII policy leaves them: ``action`` is the policy's ("off" when it has none).

    With ``redact`` and ``mask_and_restore`` the found values are placeholders in ``texts``; with ``block``
    and ``restrict`` the texts are as given and ``counts`` says what was found (entity types, never values).
    """

    texts: list[str]
    counts: dict[str, int]
    action: str


class ToolSpec(msgspec.Struct, frozen=True):
    """One tool of a tool server, as a model is offered it: its name on that server and its input's JSON schema."""

    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    # The server's hints (``readOnlyHint``, ...), as it sent them.
    annotations: dict[str, Any] | None = None


class ToolListing(msgspec.Struct, frozen=True):
    """The tools of one server a caller may call; ``error`` says why none could be listed (the server is down)."""

    tools: list[ToolSpec]
    error: str | None = None


class ToolResult(msgspec.Struct, frozen=True):
    """A tool call's outcome as text: the result's, or (``is_error``) why the call failed or was stopped."""

    output: str
    is_error: bool = False


class ToolProvider(Protocol):
    """Tool servers a plugin fronts, offered to the Responses API's ``mcp`` tools under their server labels."""

    async def list_tools(self, principal: Principal, server_label: str) -> ToolListing | None:
        """The server's tools ``principal`` may call; None when it has no server of that label the caller may use."""
        ...

    async def call_tool(
        self, principal: Principal, server_label: str, name: str, arguments: dict[str, Any], *, trace_id: str | None = None
    ) -> ToolResult:
        """One call under the plugin's grants, limits, PII policy, guardrails and audit; failures are error results."""
        ...


class Services(Protocol):
    """What the gateway offers a plugin: its pipeline, its callers, and where shared state lives."""

    log: logging.Logger
    # "serve" (sluicegate serve) or "worker" (sluicegate worker, no HTTP): where a plugin's worker should run.
    role: str
    redis_url: str | None
    postgres_dsn: str | None
    # A directory the plugin may keep embedded state in (its own subdirectory of the gateway's).
    data_dir: str

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header, as the gateway's own routes authenticate it."""
        ...

    async def principal(self, tenant: str) -> Principal:
        """A principal acting for ``tenant`` with the tenant's limits and budgets (NotFound if there is none)."""
        ...

    async def complete(
        self, principal: Principal, body: dict[str, Any], *, kind: str = "chat", trace_id: str | None = None
    ) -> Completed:
        """One model call through the whole pipeline (PII, routing, limits, budgets, ledger) as ``principal``.

        ``trace_id`` (32 hex digits) joins the call to the caller's trace: its span continues it and the
        ledger row carries it.
        """
        ...

    def task_handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        """Every enabled plugin's task handlers by kind (the serving config version's; the first plugin's wins)."""
        ...

    def tenant_config(self, tenant: str) -> TenantConfig | None:
        """The serving config version's entry for ``tenant`` (None for a tenant the config file does not name)."""
        ...

    async def scan_pii(self, tenant: str, texts: list[str]) -> PiiScan:
        """``texts`` under the tenant's PII policy (raises ``GatewayError`` 503 when the analyzer fails)."""
        ...

    async def check_guardrails(self, tenant: str, texts: list[str]) -> str | None:
        """The tenant's ``pre`` guardrails over ``texts`` as tool results: "guardrail/category" of a block, else None."""
        ...

    async def record_event(self, actor: str, action: str, tenant: str | None, target: str, event: dict[str, Any]) -> None:
        """Append an entry to the audit log (``event``: JSON-ready builtins holding no secret)."""
        ...

    def record_tool_call(
        self, tenant: str, key_id: str, server: str, tool: str, *, status: str, started_s: float, duration_s: float,
        trace_id: str | None,
    ) -> None:
        """Write a ledger row for one tool call (cost 0; ``status`` "ok" or why it failed; ``started_s`` epoch seconds)."""
        ...

    def metrics_registry(self) -> CollectorRegistry:
        """The registry the gateway's ``/metrics`` exposes: a plugin registers its collectors there, and unregisters them on close."""
        ...

    def tracer(self) -> Tracer | None:
        """The gateway's tracer when tracing is on (spans join the gateway's exporter), else None."""
        ...


class Plugin:
    """Subclass this; override the hooks you need. ``name`` is for logs and metrics."""

    name: ClassVar[str] = "plugin"
    api_version: ClassVar[int] = API_VERSION
    # The options' shape: decoded strictly from the config entry's ``options``.
    Options: ClassVar[type[msgspec.Struct]] = NoOptions
    # Routes under this prefix (e.g. "/webhooks"), or each of these prefixes, go to ``asgi()``; None: no routes.
    http_prefix: ClassVar[str | tuple[str, ...] | None] = None
    # The engines it offers (``engines()`` makes them), by the name a deployment's ``options.engine`` gives.
    engine_names: ClassVar[tuple[str, ...]] = ()
    # The guardrails it offers (``guardrails()`` gives them), by the name a ``kind: plugin`` guardrail's ``plugin`` gives.
    guardrail_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Any, services: Services) -> None:
        self.options = options
        self.services = services

    async def start(self) -> None:
        """Connect, load; runs before the first config version with this plugin serves."""

    async def close(self) -> None:
        """Release what ``start`` took; runs once no serving version has this plugin."""

    async def worker(self) -> None:
        """A background task for as long as the plugin is enabled (cancelled when it is not)."""

    def asgi(self) -> ASGIApp | None:
        """The app that serves ``http_prefix``; the path it sees still starts with the prefix."""
        return None

    def task_handlers(self) -> dict[str, Callable[[Any], Awaitable[Any]]]:
        """Handlers of task kinds, by kind: what an orchestrator plugin runs (``services.task_handlers()``)."""
        return {}

    def engines(self) -> dict[str, Callable[[Any], Any]]:
        """Engines by name: ``factory(spec)`` --> a ``serving.base.Engine`` for a deployment with ``provider: plugin``."""
        return {}

    def guardrails(self) -> dict[str, Any]:
        """Guardrails by name: each with ``name``, ``async check(texts) -> Verdict`` (and ``stream()`` for ``mode: stream``)."""
        return {}

    def tool_provider(self) -> ToolProvider | None:
        """The tool servers it offers the Responses API's ``mcp`` tools (asked once per config version), or None."""
        return None

    def console_panels(self) -> list[ConsolePanel]:
        """Pages it adds to the admin console (asked once per config version, before ``start``)."""
        return []

    async def after_auth(self, request: HookRequest) -> Reply | None:
        return None

    async def before_route(self, request: HookRequest) -> Reply | None:
        return None

    async def before_serve(self, request: HookRequest) -> Reply | None:
        return None

    def on_chunk(self, request: HookRequest, data: bytes) -> bytes | None:
        return None

    async def after_settle(self, request: HookRequest) -> None:
        return None

    def on_ledger_row(self, row: dict[str, Any]) -> None:
        return None


def overrides(plugin: Plugin, hook: str) -> bool:
    """Whether ``plugin``'s class defines ``hook`` itself (a base-class hook is never called)."""
    return getattr(type(plugin), hook) is not getattr(Plugin, hook)
