"""Prompts and resources across every upstream server, for a caller granted the whole server (``server/*``).

Names and URIs carry the server's (``names``). A prompt or resource of a
server the caller is not granted is the same "not found" as one that exists
nowhere. Each answer has the call deadline and result-size limit of its server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import mcp_types as types
from mcp import Client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from sluicegate_mcp.caller import Caller
from sluicegate_mcp.hub import Hub
from sluicegate_mcp.names import prefixed, prefixed_uri, split, split_uri
from sluicegate_mcp.upstream import UpstreamUnavailable

RESOURCE_NOT_FOUND = -32002
_R = TypeVar("_R", bound=BaseModel)


class Catalog:
    def __init__(self, hub: Hub, log: logging.Logger) -> None:
        self._hub = hub
        self._log = log

    async def list_prompts(self, caller: Caller) -> types.ListPromptsResult:
        found = await self._gather(caller, "prompts")
        return types.ListPromptsResult(prompts=[p.model_copy(update={"name": prefixed(s, p.name)}) for s, p in found])

    async def list_resources(self, caller: Caller) -> types.ListResourcesResult:
        found = await self._gather(caller, "resources")
        return types.ListResourcesResult(resources=[r.model_copy(update={"uri": prefixed_uri(s, str(r.uri))}) for s, r in found])

    async def list_resource_templates(self, caller: Caller) -> types.ListResourceTemplatesResult:
        found = await self._gather(caller, "resource_templates")
        templates = [t.model_copy(update={"uri_template": prefixed_uri(s, t.uri_template)}) for s, t in found]
        return types.ListResourceTemplatesResult(resource_templates=templates)

    async def get_prompt(self, caller: Caller, name: str, arguments: dict[str, str] | None) -> types.GetPromptResult:
        parts = split(name)
        if parts is None or not self._granted(caller, parts[0]):
            raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {name[:200]}")
        server, prompt = parts
        return await self._ask(caller, server, lambda c: c.get_prompt(prompt, arguments), types.GetPromptResult)

    async def read_resource(self, caller: Caller, uri: str) -> types.ReadResourceResult:
        parts = split_uri(uri)
        if parts is None or not self._granted(caller, parts[0]):
            raise MCPError(RESOURCE_NOT_FOUND, "Resource not found", {"uri": uri[:500]})
        server, upstream_uri = parts
        result = await self._ask(caller, server, lambda c: c.read_resource(upstream_uri), types.ReadResourceResult)
        contents = [c.model_copy(update={"uri": prefixed_uri(server, str(c.uri))}) for c in result.contents]
        return result.model_copy(update={"contents": contents})

    def _granted(self, caller: Caller, server: str) -> bool:
        return server in self._hub.servers and caller.access.whole_server(server)

    async def _gather(self, caller: Caller, kind: str) -> list[tuple[str, Any]]:
        servers = sorted(s for s in self._hub.servers if caller.access.whole_server(s))
        listed = await asyncio.gather(*(self._listing(s, caller.tenant, kind) for s in servers))
        return [(server, item) for server, items in zip(servers, listed) for item in items]

    async def _listing(self, server: str, tenant: str, kind: str) -> list[Any]:
        try:
            return await self._hub.listing(server, tenant, kind)
        except MCPError as exc:
            if exc.code != types.METHOD_NOT_FOUND:
                self._log.warning("mcp server %s: %s list failed (code %s)", server, kind, exc.code)
            return []
        except Exception as exc:  # noqa: BLE001 - a server that fails to list is left out, nothing else
            self._log.warning("mcp server %s: %s list failed (%s)", server, kind, type(exc).__name__)
            return []

    async def _ask(self, caller: Caller, server: str, ask: Callable[[Client], Awaitable[_R]], shape: type[_R]) -> _R:
        timeout = self._hub.timeout_s(server)
        try:
            async with asyncio.timeout(timeout):
                async with self._hub.upstream(server, caller.tenant).use() as client:
                    result = await ask(client)
        except TimeoutError:
            raise MCPError(types.INTERNAL_ERROR, f"The server did not answer within {timeout:g}s.") from None
        except UpstreamUnavailable:
            raise MCPError(types.INTERNAL_ERROR, "The server is unavailable; try again later.") from None
        except MCPError as exc:
            raise MCPError(exc.code, "The server answered with an error.") from None
        except Exception as exc:  # noqa: BLE001 - a malformed answer or a dead connection fails this request only
            self._log.warning("mcp server %s: request failed (%s)", server, type(exc).__name__)
            raise MCPError(types.INTERNAL_ERROR, "The server failed or sent a malformed answer.") from None
        limit = self._hub.max_result_bytes(server)
        if len(result.model_dump_json(by_alias=True, exclude_none=True)) > limit:
            raise MCPError(types.INTERNAL_ERROR, f"The answer is larger than the {limit} bytes allowed.")
        return result
