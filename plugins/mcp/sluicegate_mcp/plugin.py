"""The ``mcp`` plugin: one governed MCP endpoint, ``/mcp``, in front of the upstream MCP servers of its options.

Enable it in the live config::

    plugins:
      - name: mcp
        options:
          servers:
            - {name: docs, url: "https://docs.example/mcp", headers: {Authorization: {env: DOCS_MCP_TOKEN}}}
            - {name: files, command: mcp-server-files, args: ["/srv/share"]}
    tenants:
      - {id: acme, mcp_tools: ["docs/*", "files/read_file"], keys: [...]}

``start`` resolves every credential reference (one that does not resolve
refuses the start, naming the key, never the value), registers the metrics
and runs the streamable-HTTP session manager; ``close`` ends the sessions,
the upstream connections (and stdio processes), and waits for pending audit
entries. A config version that changes the plugin's entry builds a new
instance: upstream servers are reloaded with it. The same servers are offered to
the Responses API's ``mcp`` tools (``tool_provider``), under the same grants,
and shown in the admin console with their tools and grants (``console.ServersPanel``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from core.console_panel import ConsolePanel
from core.plugin import ASGIApp, Plugin, Services, ToolProvider
from sluicegate_mcp.admission import Admission
from sluicegate_mcp.catalog import Catalog
from sluicegate_mcp.console import ServersPanel
from sluicegate_mcp.http import MCP_PATH, METADATA_PATH, McpHttp
from sluicegate_mcp.hub import Hub
from sluicegate_mcp.meter import Meter
from sluicegate_mcp.options import Options as McpOptions
from sluicegate_mcp.provider import McpToolProvider
from sluicegate_mcp.server import Handlers
from sluicegate_mcp.tools import Tools
from sluicegate_mcp.upstream import ChangeNotice

START_TIMEOUT_S = 10.0
# The SDK's HTTP client logs every request with its URL, which may carry an upstream's credentials: warnings only.
QUIET_LOGGERS = ("httpx2",)


class McpPlugin(Plugin):
    name = "mcp"
    api_version = 1
    Options = McpOptions
    http_prefix = (MCP_PATH, METADATA_PATH)

    def __init__(self, options: McpOptions, services: Services) -> None:
        super().__init__(options, services)
        self.options: McpOptions = options
        self._hub: Hub | None = None
        self._meter: Meter | None = None
        self._handlers: Handlers | None = None
        self._tools: Tools | None = None
        self._app: McpHttp | None = None
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        log = self.services.log
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        hub = Hub(self.options, log, self._changed)
        hub.check()
        meter = Meter(self.services)
        tools = Tools(hub, self.services, meter, Admission(), log)
        handlers = Handlers(self.services, tools, Catalog(hub, log), log)
        manager = StreamableHTTPSessionManager(
            handlers.server(),
            max_request_body_size=self.options.max_body_bytes,
            session_idle_timeout=self.options.session_idle_timeout_s,
        )
        ready = asyncio.Event()
        self._runner = asyncio.create_task(self._run(manager, ready), name="mcp-sessions")
        await asyncio.wait_for(ready.wait(), START_TIMEOUT_S)
        meter.open()
        self._hub, self._meter, self._handlers, self._tools = hub, meter, handlers, tools
        self._app = McpHttp(manager.handle_request, self.services, self.options)
        log.info("mcp plugin: %d upstream servers", len(self.options.servers))

    async def close(self) -> None:
        self._app = None
        self._tools = None
        self._stop.set()
        if self._runner is not None:
            _, pending = await asyncio.wait({self._runner}, timeout=10.0)
            for task in pending:
                task.cancel()
            self._runner = None
        if self._hub is not None:
            await self._hub.close()
            self._hub = None
        if self._meter is not None:
            await self._meter.close()
            self._meter = None

    def tool_provider(self) -> ToolProvider:
        """The upstream servers, by name, for the Responses API's ``mcp`` tools (the same calls as ``/mcp``'s)."""
        return McpToolProvider(lambda: self._tools, self.services, self.services.log)

    def console_panels(self) -> list[ConsolePanel]:
        return [ServersPanel(lambda: self._hub, self.services)]

    def asgi(self) -> ASGIApp:
        return self._serve

    async def _serve(self, scope: Any, receive: Any, send: Any) -> None:
        app = self._app
        if app is None:
            body = b'{"error":{"message":"The MCP gateway is not started.","type":"server_error","param":null,"code":"overloaded"}}'
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    async def _run(self, manager: StreamableHTTPSessionManager, ready: asyncio.Event) -> None:
        # The manager's task group must be entered and left in one task: this one, for the plugin's lifetime.
        async with manager.run():
            ready.set()
            await self._stop.wait()

    def _changed(self, notice: ChangeNotice) -> None:
        if self._handlers is not None:
            self._handlers.changed(notice)
