"""Plugins on the gateway: found through entry points, checked with the config, built per version, hooks run by policy.

``check`` is part of the one validation (``router.config_resolve``): an
unknown name, an interface version this gateway does not speak or a bad option
is a ``ConfigError`` naming the key. ``PluginHost`` builds a ``PluginSet`` for
each config version, reusing the instance of an entry that did not change;
the snapshot carries the set, so a request runs the hooks of the version it
started on. A set keeps one tuple per hook of the plugins that override it:
the pipeline tests the tuple and pays nothing when it is empty. The set also
holds the tool servers its plugins offer (``tool_server``), for the Responses
API's ``mcp`` tools, and the console panels they offer (``panel``), for the
admin console's plugin pages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import msgspec

from core.config import PluginConfig
from core.console_panel import PANEL_NAME, ConsolePanel
from core.errors import GatewayError, Overloaded
from core.plugin import (
    API_VERSION,
    ENTRY_POINT_GROUP,
    SUPPORTED_API_VERSIONS,
    HookRequest,
    Plugin,
    Reply,
    Services,
    ToolListing,
    ToolProvider,
    overrides,
)

if TYPE_CHECKING:
    from core.principal import Principal
    from router.metrics import Metrics

log = logging.getLogger("sluicegate.plugins")


class PluginFailed(Overloaded):
    """A plugin whose failure policy is fail_closed failed on this request."""

    code = "plugin_failed"
    retryable = False


class ShortCircuit(Exception):
    """A hook answered the request itself; the route renders ``reply`` as it would a model's answer."""

    def __init__(self, reply: Reply, plugin: str) -> None:
        super().__init__(plugin)
        self.reply = reply
        self.plugin = plugin


@dataclass(frozen=True, slots=True)
class Loaded:
    """A config entry whose plugin was found and whose options decoded."""

    config: PluginConfig
    cls: type[Plugin]
    options: msgspec.Struct


def discover() -> dict[str, EntryPoint]:
    """The installed plugins, by entry-point name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def check(configs: list[PluginConfig]) -> tuple[list[Loaded], list[str]]:
    """The enabled entries, loaded; and every problem, each naming its key."""
    installed = discover() if configs else {}
    loaded: list[Loaded] = []
    problems: list[str] = []
    seen: set[str] = set()
    for i, entry in enumerate(configs):
        where = f"plugins[{i}]"
        if entry.name in seen:
            problems.append(f"key `{where}.name`: plugin {entry.name!r} is listed twice")
            continue
        seen.add(entry.name)
        if not entry.enabled:
            continue
        ep = installed.get(entry.name)
        if ep is None:
            known = ", ".join(sorted(installed)) or "none"
            problems.append(f"key `{where}.name`: no installed plugin is named {entry.name!r} (installed: {known})")
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a third party's import: whatever it raises is its own fault, reported by name
            problems.append(f"key `{where}.name`: plugin {entry.name!r} failed to import ({type(exc).__name__}: {exc})")
            continue
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            problems.append(f"key `{where}.name`: entry point {entry.name!r} is not a core.plugin.Plugin subclass")
            continue
        if cls.api_version not in SUPPORTED_API_VERSIONS:
            problems.append(
                f"key `{where}.name`: plugin {entry.name!r} was built for plugin interface {cls.api_version}; "
                f"this gateway speaks {API_VERSION}"
            )
            continue
        try:
            options = msgspec.convert(entry.options, cls.Options)
        except msgspec.ValidationError as exc:
            problems.append(f"key `{where}.options`: {str(exc).replace('$.', 'options.').replace('`$`', '`options`')}")
            continue
        loaded.append(Loaded(entry, cls, options))
    return loaded, problems


@dataclass(frozen=True, slots=True)
class _Hook:
    plugin: str
    fn: Callable[..., Any]
    fail_closed: bool
    timeout_s: float


@dataclass(slots=True, eq=False)
class PluginSet:
    """The plugins one config version enables, and their hooks in config order."""

    plugins: tuple[tuple[Loaded, Plugin], ...] = ()
    metrics: Metrics | None = None
    after_auth: tuple[_Hook, ...] = ()
    before_route: tuple[_Hook, ...] = ()
    before_serve: tuple[_Hook, ...] = ()
    on_chunk: tuple[_Hook, ...] = ()
    after_settle: tuple[_Hook, ...] = ()
    on_ledger_row: tuple[_Hook, ...] = ()
    engines: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    by_name: dict[str, Plugin] = field(default_factory=dict)
    # engine name --> the instance that makes it: an engine is kept across versions only while its maker is.
    engine_owners: dict[str, Plugin] = field(default_factory=dict)
    # Guardrails the plugins offer, by name (the first plugin in config order that offers a name wins).
    guardrails: dict[str, Any] = field(default_factory=dict)
    # Tool servers the plugins offer, in config order (asked by server label).
    tool_providers: tuple[ToolProvider, ...] = ()
    # Console panels the plugins offer, in config order (the first plugin to offer a name wins).
    console_panels: tuple[ConsolePanel, ...] = ()
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        for name in ("after_auth", "before_route", "before_serve", "on_chunk", "after_settle", "on_ledger_row"):
            hooks = tuple(
                _Hook(loaded.config.name, getattr(plugin, name), loaded.config.on_error == "fail_closed", loaded.config.timeout_s)
                for loaded, plugin in self.plugins
                if overrides(plugin, name)
            )
            setattr(self, name, hooks)
        for loaded, plugin in self.plugins:
            self.by_name[loaded.config.name] = plugin
            for engine, factory in plugin.engines().items():
                if engine not in self.engines:
                    self.engines[engine] = factory
                    self.engine_owners[engine] = plugin
            for name, guardrail in (plugin.guardrails() if loaded.cls.guardrail_names else {}).items():
                self.guardrails.setdefault(name, guardrail)
        providers = (plugin.tool_provider() for _, plugin in self.plugins if overrides(plugin, "tool_provider"))
        self.tool_providers = tuple(p for p in providers if p is not None)
        self.console_panels = self._panels()

    def _panels(self) -> tuple[ConsolePanel, ...]:
        found: dict[str, ConsolePanel] = {}
        for loaded, plugin in self.plugins:
            if not overrides(plugin, "console_panels"):
                continue
            for panel in plugin.console_panels():
                if not PANEL_NAME.match(panel.name):
                    log.warning("plugin %s: console panel %r has no valid name; left out", loaded.config.name, panel.name[:64])
                    continue
                found.setdefault(panel.name, panel)
        return tuple(found.values())

    def panel(self, name: str) -> ConsolePanel | None:
        """The console panel called ``name``, if a plugin of this version offers one."""
        return next((p for p in self.console_panels if p.name == name), None)

    async def tool_server(self, principal: Principal, server_label: str) -> tuple[ToolProvider, ToolListing] | None:
        """The first provider with a server of that label ``principal`` may use, and its listing; None if none has."""
        for provider in self.tool_providers:
            listing = await provider.list_tools(principal, server_label)
            if listing is not None:
                return provider, listing
        return None

    async def run(self, hooks: tuple[_Hook, ...], name: str, ctx: HookRequest) -> None:
        """Run one request hook of each plugin in order; a Reply ends the request (``ShortCircuit``)."""
        for hook in hooks:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(hook.timeout_s):
                    reply = await hook.fn(ctx)
            except GatewayError:
                raise  # a Refusal (or any gateway error the plugin chose): the client's answer
            except TimeoutError:
                self._failed(hook, name, "timeout")
                continue
            except Exception as exc:  # the plugin's bug must not become the gateway's
                self._failed(hook, name, "error", exc)
                continue
            finally:
                self._time(hook, name, started)
            if reply is not None:
                if not isinstance(reply, Reply):
                    self._failed(hook, name, "error", TypeError(f"{name} returned {type(reply).__name__}, not a Reply"))
                    continue
                raise ShortCircuit(reply, hook.plugin)

    def chunk(self, ctx: HookRequest, data: bytes) -> bytes:
        """Each ``on_chunk`` hook in order, on one streamed chunk's JSON."""
        for hook in self.on_chunk:
            started = time.perf_counter()
            try:
                changed = hook.fn(ctx, data)
            except GatewayError:
                raise
            except Exception as exc:
                self._failed(hook, "on_chunk", "error", exc)
                continue
            finally:
                self._time(hook, "on_chunk", started)
            if changed is not None:
                data = changed
        return data

    def settled(self, ctx: HookRequest, settling: asyncio.Task[None] | None) -> None:
        """Run ``after_settle`` hooks once the request's settlement is done, off the request's path."""
        task = asyncio.get_running_loop().create_task(self._after_settle(ctx, settling))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after_settle(self, ctx: HookRequest, settling: asyncio.Task[None] | None) -> None:
        if settling is not None:
            try:
                await asyncio.shield(settling)
            except Exception:
                return  # settlement's own failure is billing's to report
        for hook in self.after_settle:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(hook.timeout_s):
                    await hook.fn(ctx)
            except TimeoutError:
                self._failed(hook, "after_settle", "timeout")
            except Exception as exc:
                self._failed(hook, "after_settle", "error", exc)
            finally:
                self._time(hook, "after_settle", started)

    def ledger_row(self, row: dict[str, Any]) -> None:
        for hook in self.on_ledger_row:
            started = time.perf_counter()
            try:
                hook.fn(row)
            except Exception as exc:
                self._failed(hook, "on_ledger_row", "error", exc, closing=False)
            finally:
                self._time(hook, "on_ledger_row", started)

    def _time(self, hook: _Hook, name: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.plugin_hook_seconds.labels(hook.plugin, name).observe(time.perf_counter() - started)

    def _failed(self, hook: _Hook, name: str, reason: str, exc: BaseException | None = None, *, closing: bool = True) -> None:
        if self.metrics is not None:
            self.metrics.plugin_errors.labels(hook.plugin, name, reason).inc()
        what = "timed out" if exc is None else f"raised {type(exc).__name__}"
        if hook.fail_closed and closing and name in ("after_auth", "before_route", "before_serve", "on_chunk"):
            log.error("plugin %s hook %s %s; the request is refused (fail_closed)", hook.plugin, name, what)
            raise PluginFailed(f"A gateway plugin ({hook.plugin}) failed on this request.", retry_after=1)
        log.warning("plugin %s hook %s %s; skipped (fail_open)", hook.plugin, name, what)

    async def drain(self) -> None:
        """Wait for the ``after_settle`` hooks still running."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


NO_PLUGINS = PluginSet()


class PluginHost:
    """Owns the plugin instances: builds each version's set, starts what is new, closes what no version has."""

    def __init__(self, services: Callable[[str], Services], metrics: Metrics) -> None:
        self._services = services
        self._metrics = metrics
        self._started: dict[int, asyncio.Task[None] | None] = {}  # id(instance) --> its worker task
        self._live: dict[int, Plugin] = {}

    def prepare(self, loaded: list[Loaded], previous: PluginSet | None) -> PluginSet:
        """The set for ``loaded``: an entry the previous set has unchanged keeps its instance."""
        if not loaded:
            return NO_PLUGINS
        before = list(previous.plugins) if previous is not None else []
        pairs = []
        for entry in loaded:
            plugin = next((p for e, p in before if e.config == entry.config), None)
            if plugin is None:
                plugin = entry.cls(entry.options, self._services(entry.config.name))
            pairs.append((entry, plugin))
        return PluginSet(tuple(pairs), self._metrics)

    async def start(self, plugins: PluginSet) -> None:
        """Start the set's instances not yet started, and their workers; a failure to start fails the version."""
        for entry, plugin in plugins.plugins:
            key = id(plugin)
            if key in self._started:
                continue
            await plugin.start()
            worker = None
            if overrides(plugin, "worker"):
                worker = asyncio.get_running_loop().create_task(self._run_worker(entry.config.name, plugin.worker))
            self._started[key] = worker
            self._live[key] = plugin

    async def retire(self, old: PluginSet, new: PluginSet) -> None:
        """Close the instances of ``old`` that ``new`` does not keep."""
        kept = {id(plugin) for _, plugin in new.plugins}
        await old.drain()
        for entry, plugin in old.plugins:
            if id(plugin) not in kept:
                await self._close(entry.config.name, plugin)

    async def close(self) -> None:
        for key, plugin in list(self._live.items()):
            await self._close(getattr(plugin, "name", "plugin"), plugin)
            self._live.pop(key, None)

    async def _close(self, name: str, plugin: Plugin) -> None:
        key = id(plugin)
        worker = self._started.pop(key, None)
        self._live.pop(key, None)
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        try:
            await plugin.close()
        except Exception as exc:
            log.warning("plugin %s did not close cleanly: %s", name, type(exc).__name__)

    async def _run_worker(self, name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A plugin's worker; one that fails is logged and started again after a pause, never left dead silently."""
        while True:
            try:
                await work()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._metrics.plugin_errors.labels(name, "worker", "error").inc()
                log.error("plugin %s worker failed (%s); restarting in 5 s", name, type(exc).__name__)
                await asyncio.sleep(5.0)
