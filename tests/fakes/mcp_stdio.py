"""An upstream MCP server over stdio for the MCP gateway's tests: the gateway starts it as a child process.

Tools: ``pid`` (its process id), ``secret`` (the SHA-256 of ``MCP_STDIO_SECRET``
in its environment, never the value) and ``die`` (the process exits at once,
mid-call).

    python -m tests.fakes.mcp_stdio
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server

Ctx = ServerRequestContext[Any, Any]
SECRET_ENV = "MCP_STDIO_SECRET"


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def build() -> Server[Any]:
    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        tools = [types.Tool(name=n, input_schema={"type": "object", "properties": {}}) for n in ("pid", "secret", "die")]
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        if params.name == "pid":
            return _text(str(os.getpid()))
        if params.name == "secret":
            value = os.environ.get(SECRET_ENV)
            return _text("unset" if value is None else hashlib.sha256(value.encode()).hexdigest())
        os._exit(3)

    return Server("stdio", on_list_tools=list_tools, on_call_tool=call_tool)


async def _serve() -> None:
    server = build()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def main() -> None:
    anyio.run(_serve)


if __name__ == "__main__":
    main()
