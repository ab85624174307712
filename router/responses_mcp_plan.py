"""What a Responses request's ``mcp`` tools ask for, checked before any model is called.

Each ``mcp`` tool names a server that a plugin fronts (``core.plugin.ToolProvider``,
found through the serving version's ``PluginSet``); a label that no plugin
serves to this caller is a 400 naming that label only. ``approved`` checks the
``mcp_approval_response`` items of the input against the conversation, and
``function_names`` picks the names the model calls the servers' tools by.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import msgspec

from core.errors import InvalidRequest
from core.plugin import ToolListing, ToolProvider, ToolSpec
from core.principal import Principal
from router.plugins import PluginSet
from router.responses_mcp_wire import McpTool
from router.responses_render import JsonObject

_FUNCTION_CHARS = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(slots=True)
class McpServer:
    """One ``mcp`` tool of the request, resolved: who serves it, and the tools the model may see."""

    tool: McpTool
    provider: ToolProvider
    listing: ToolListing
    tools: dict[str, ToolSpec]  # allowed by the grants and by ``allowed_tools``, by name

    @property
    def label(self) -> str:
        return self.tool.server_label


async def resolve(plugins: PluginSet, principal: Principal, tools: list[tuple[int, McpTool]]) -> list[McpServer]:
    """Each tool's server and listing; a 400 naming the first label no plugin serves to ``principal``."""
    found = await asyncio.gather(*(plugins.tool_server(principal, tool.server_label) for _, tool in tools))
    servers: list[McpServer] = []
    for (i, tool), server in zip(tools, found):
        if server is None:
            # One answer for "not configured" and "not yours": never a hint of another tenant's servers.
            raise InvalidRequest(
                f"MCP server `{tool.server_label}` is not available to this API key.",
                param=f"tools[{i}].server_label",
                code="mcp_server_not_found",
            )
        provider, listing = server
        allowed = {spec.name: spec for spec in listing.tools if tool.allows(spec.name, spec.annotations)}
        servers.append(McpServer(tool, provider, listing, allowed))
    return servers


def approved(history: list[JsonObject], items: list[JsonObject], servers: list[McpServer]) -> list[JsonObject]:
    """The approval requests this request's input approves; a 400 for an answer to none, or to one answered before."""
    asked = {i["id"]: i for i in (*history, *items) if i["type"] == "mcp_approval_request"}
    answered = {i["approval_request_id"] for i in history if i["type"] == "mcp_approval_response"}
    labels = {s.label for s in servers}
    out: list[JsonObject] = []
    for n, item in enumerate(items):
        if item["type"] != "mcp_approval_response":
            continue
        request_id = item["approval_request_id"]
        param = f"input[{n}].approval_request_id"
        request = asked.get(request_id)
        if request is None:
            raise InvalidRequest(f"No MCP approval request `{request_id[:128]}` in this conversation.", param=param, code="invalid_value")
        if request_id in answered:
            raise InvalidRequest(f"MCP approval request `{request_id[:128]}` was answered before.", param=param, code="invalid_value")
        if request["server_label"] not in labels:
            message = f"MCP approval request `{request_id[:128]}` calls server `{request['server_label']}`, which `tools` does not include."
            raise InvalidRequest(message, param=param, code="invalid_value")
        if item["approve"]:
            out.append(request)
    return out


def function_names(servers: list[McpServer], taken: set[str]) -> dict[str, tuple[McpServer, ToolSpec]]:
    """The function name the model calls each MCP tool by: its own, else ``label__name``, else that with a number.

    Chat APIs take letters, digits, ``_`` and ``-`` (64 at most) in a function's name; anything else becomes ``_``.
    """
    names: dict[str, tuple[McpServer, ToolSpec]] = {}
    for server in servers:
        for spec in server.tools.values():
            own = _FUNCTION_CHARS.sub("_", spec.name)[:64]
            candidates = (own, _FUNCTION_CHARS.sub("_", f"{server.label}__{spec.name}")[:64])
            name = next((c for c in candidates if c not in taken and c not in names), None)
            n = 2
            while name is None or name in taken or name in names:
                name = f"{candidates[1][:58]}_{n}"
                n += 1
            names[name] = (server, spec)
    return names


def echo_tools(functions: list[JsonObject], mcp: list[tuple[int, McpTool]]) -> list[JsonObject]:
    """The request's tools as a Response repeats them: its function tools and its ``mcp`` tools, in the order sent."""
    placed = {i: msgspec.to_builtins(tool) for i, tool in mcp}
    rest = iter(functions)
    out: list[JsonObject] = []
    for i in range(len(functions) + len(mcp)):
        out.append(placed[i] if i in placed else next(rest))
    return out
