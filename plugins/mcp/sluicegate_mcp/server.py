"""The gateway's own MCP server: one ``mcp`` lowlevel ``Server`` whose handlers multiplex the upstream servers.

Every handler reads its caller from the HTTP request that carried the message
(``caller``) and answers within that caller's grants. List-changed
notifications from an upstream server go on to the open sessions of callers
who may see that server.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession

from core.plugin import Services
from sluicegate_mcp.caller import Caller, caller_of
from sluicegate_mcp.catalog import Catalog
from sluicegate_mcp.tools import Tools
from sluicegate_mcp.upstream import ChangeNotice

SERVER_NAME = "sluicegate"
# Sessions remembered for list-changed notifications; the oldest is forgotten beyond it.
MAX_WATCHED_SESSIONS = 10_000
Context = ServerRequestContext[Any, Any]


class GatewayServer(Server[Any]):
    """A lowlevel ``Server`` that says its lists may change (it relays its upstream servers' notifications)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        every = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        return super().create_initialization_options(notification_options or every, experimental_capabilities, extensions)


class Handlers:
    def __init__(self, services: Services, tools: Tools, catalog: Catalog, log: logging.Logger) -> None:
        self._services = services
        self._tools = tools
        self._catalog = catalog
        self._log = log
        self._watched: OrderedDict[str, tuple[ServerSession, Caller]] = OrderedDict()
        self._sends: set[asyncio.Task[None]] = set()

    def server(self) -> GatewayServer:
        return GatewayServer(
            SERVER_NAME,
            version="0.1.0",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
        )

    def _caller(self, ctx: Context) -> Caller:
        caller = caller_of(ctx.request, self._services)
        if caller.session_id is not None:
            self._watched[caller.session_id] = (ctx.session, caller)
            self._watched.move_to_end(caller.session_id)
            while len(self._watched) > MAX_WATCHED_SESSIONS:
                self._watched.popitem(last=False)
        return caller

    async def list_tools(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return await self._tools.list_tools(self._caller(ctx))

    async def call_tool(self, ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
        call_id = None if ctx.request_id is None else str(ctx.request_id)
        return await self._tools.call_tool(self._caller(ctx), params.name, params.arguments, call_id)

    async def list_prompts(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return await self._catalog.list_prompts(self._caller(ctx))

    async def get_prompt(self, ctx: Context, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        return await self._catalog.get_prompt(self._caller(ctx), params.name, params.arguments)

    async def list_resources(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return await self._catalog.list_resources(self._caller(ctx))

    async def list_resource_templates(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
        return await self._catalog.list_resource_templates(self._caller(ctx))

    async def read_resource(self, ctx: Context, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        return await self._catalog.read_resource(self._caller(ctx), str(params.uri))

    def changed(self, notice: ChangeNotice) -> None:
        """Tell the open sessions that may see ``notice.server`` that its list changed."""
        for session_id, (session, caller) in list(self._watched.items()):
            if notice.server in caller.access.servers():
                task = asyncio.create_task(self._send(session_id, session, notice.kind))
                self._sends.add(task)
                task.add_done_callback(self._sends.discard)

    async def _send(self, session_id: str, session: ServerSession, kind: str) -> None:
        try:
            async with asyncio.timeout(5.0):
                if kind == "tools":
                    await session.send_tool_list_changed()
                elif kind == "prompts":
                    await session.send_prompt_list_changed()
                else:
                    await session.send_resource_list_changed()
        except Exception:  # noqa: BLE001 - a session that has gone is forgotten
            self._watched.pop(session_id, None)
