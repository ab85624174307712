"""Two upstream MCP servers for the MCP gateway's tests, built on the ``mcp`` SDK's lowlevel server.

``good`` behaves: ``echo``, ``add``, ``contact`` (a result holding an email
address), ``leak`` (a result a deny-pattern guardrail refuses), ``grow`` (adds the tool
``grown`` and says its tool list changed), ``headers`` (what the gateway sent it: whether its credential came
and whether any client token did), a prompt and a resource. ``bad`` does not:
``hang`` never answers, ``flood`` answers megabytes, ``malformed`` answers a
result that is not one, ``crash`` fails inside the handler, ``quick`` answers.

    python -m tests.fakes.mcp_upstreams good --port 9001 [--expect-key-env NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

Ctx = ServerRequestContext[Any, Any]
FLOOD_BYTES = 3 * 1024 * 1024


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def _tool(name: str, properties: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, description=f"The {name} tool.", input_schema={"type": "object", "properties": properties or {}})


def good(expected_key: str | None) -> Server[Any]:
    grown: list[str] = []

    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[
                *(_tool(name) for name in grown),
                _tool("grow"),
                _tool("echo", {"text": {"type": "string"}}),
                _tool("add", {"a": {"type": "number"}, "b": {"type": "number"}}),
                _tool("contact"),
                _tool("headers"),
                _tool("leak"),
            ]
        )

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        if params.name == "echo":
            return _text(str(args.get("text", "")))
        if params.name == "add":
            return _text(str(args.get("a", 0) + args.get("b", 0)))
        if params.name == "grow":
            grown.append("grown")
            await ctx.session.send_tool_list_changed()
            return _text("grown")
        if params.name == "leak":
            return _text("The code is FORBIDDEN-1234.")
        if params.name == "contact":
            return _text("Write to alice.smith@example.com for access.")
        if params.name == "headers":
            headers = ctx.request.headers if ctx.request is not None else {}
            seen = {
                "upstream_key_ok": expected_key is not None and headers.get("x-upstream-key") == expected_key,
                "authorization": headers.get("authorization"),
            }
            return _text(repr(seen))
        raise ValueError(f"no tool {params.name}")

    async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=[types.Prompt(name="greet", description="A greeting.")])

    async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        message = types.PromptMessage(role="user", content=types.TextContent(type="text", text="Say hello."))
        return types.GetPromptResult(messages=[message])

    async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[types.Resource(name="readme", uri="file:///readme.md")])

    async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        contents = types.TextResourceContents(uri=str(params.uri), text="# Read me", mime_type="text/markdown")
        return types.ReadResourceResult(contents=[contents])

    return Server(
        "good", on_list_tools=list_tools, on_call_tool=call_tool, on_list_prompts=list_prompts, on_get_prompt=get_prompt,
        on_list_resources=list_resources, on_read_resource=read_resource,
    )  # fmt: skip


def bad() -> Server[Any]:
    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[_tool(n) for n in ("hang", "flood", "malformed", "crash", "quick")])

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> Any:
        if params.name == "hang":
            await asyncio.sleep(3600)
        if params.name == "flood":
            return _text("x" * FLOOD_BYTES)
        if params.name == "malformed":
            return {"content": "not a list", "isError": "perhaps"}
        if params.name == "crash":
            raise RuntimeError("the handler failed")
        return _text("quick")

    return Server("bad", on_list_tools=list_tools, on_call_tool=call_tool)


async def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", choices=["good", "bad"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--expect-key-env")
    args = parser.parse_args()
    expected = os.environ.get(args.expect_key_env) if args.expect_key_env else None
    server = good(expected) if args.which == "good" else bad()
    app = server.streamable_http_app(custom_starlette_routes=[Route("/healthz", _healthz)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
