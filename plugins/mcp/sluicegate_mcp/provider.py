"""The plugin's upstream servers offered to the Responses API's ``mcp`` tools (``core.plugin.ToolProvider``).

A server label is a configured server's name. The caller is the principal
of the Responses request, with the grants of its tenant and key, exactly as
a ``/mcp`` caller: a server it may not use is as absent as one that does not
exist, and every call goes through ``Tools.call_tool`` (admission, PII,
guardrails, the deadline, the size limit, metrics, the audit entry).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from core.plugin import Services, ToolListing, ToolResult, ToolSpec
from core.principal import Principal
from sluicegate_mcp.caller import Caller
from sluicegate_mcp.grants import access_for
from sluicegate_mcp.names import prefixed
from sluicegate_mcp.tools import Tools

_TRACE_ID = re.compile(r"[0-9a-f]{32}")


class McpToolProvider:
    """Lists and calls the servers of one plugin instance; before it has started (or after it closed) it has none."""

    def __init__(self, tools: Callable[[], Tools | None], services: Services, log: logging.Logger) -> None:
        self._tools = tools
        self._services = services
        self._log = log

    async def list_tools(self, principal: Principal, server_label: str) -> ToolListing | None:
        tools = self._tools()
        caller = self._caller(principal, None)
        if tools is None or not tools.serves(caller, server_label):
            return None
        try:
            found = await tools.granted_tools(caller, server_label)
        except Exception as exc:  # noqa: BLE001 - a server that cannot list is reported as such, never its own words
            self._log.warning("mcp server %s: tools/list failed (%s)", server_label, type(exc).__name__)
            return ToolListing(tools=[], error=f"The MCP server {server_label} is unavailable; try again later.")
        return ToolListing(tools=[_spec(tool) for tool in found])

    async def call_tool(
        self, principal: Principal, server_label: str, name: str, arguments: dict[str, Any], *, trace_id: str | None = None
    ) -> ToolResult:
        tools = self._tools()
        if tools is None:
            return ToolResult(output=f"The server of tool {name} is unavailable; try again later.", is_error=True)
        caller = self._caller(principal, trace_id)
        try:
            result = await tools.call_tool(caller, prefixed(server_label, name), arguments, None)
        except MCPError as exc:
            return ToolResult(output=exc.message, is_error=True)
        return ToolResult(output=result_text(result), is_error=bool(result.is_error))

    def _caller(self, principal: Principal, trace_id: str | None) -> Caller:
        access = access_for(self._services.tenant_config(principal.tenant), principal.key_id)
        traceparent = None
        if trace_id is not None and _TRACE_ID.fullmatch(trace_id) and trace_id != "0" * 32:
            traceparent = f"00-{trace_id}-{os.urandom(8).hex()}-01"
        return Caller(principal, access, traceparent, None)


def _spec(tool: types.Tool) -> ToolSpec:
    annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations is not None else None
    return ToolSpec(name=tool.name, input_schema=dict(tool.input_schema), description=tool.description, annotations=annotations)


def result_text(result: types.CallToolResult) -> str:
    """What a model reads of a result: its texts (embedded text resources too), else its structured content as JSON."""
    texts: list[str] = []
    for part in result.content:
        if isinstance(part, types.TextContent):
            texts.append(part.text)
        elif isinstance(part, types.EmbeddedResource) and isinstance(part.resource, types.TextResourceContents):
            texts.append(part.resource.text)
        else:
            texts.append(f"[{part.type} content]")
    if not texts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(texts)
