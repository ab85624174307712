"""``tools/list`` and ``tools/call`` across every upstream server, as one caller's grants allow.

A tool the caller may not use is absent from its list, and calling it is the
same "unknown tool" error as calling one that exists nowhere: the answer
never tells another tenant's server or tool from a missing one. A call goes
through admission (calls a minute, calls in flight), the tenant's PII policy
on its arguments, the server under a deadline, a size limit on the result,
the PII policy on the result, and the tenant's guardrails on the result; each step that stops it answers an error
result (``isError``) naming the reason, never the upstream's own words.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from core.errors import GatewayError
from core.plugin import Services
from sluicegate_mcp import pii
from sluicegate_mcp.admission import Admission
from sluicegate_mcp.caller import Caller
from sluicegate_mcp.hub import Hub
from sluicegate_mcp.meter import Meter, ToolCall, trace_of
from sluicegate_mcp.names import prefixed, split
from sluicegate_mcp.upstream import UpstreamUnavailable


def unknown_tool(name: str) -> MCPError:
    # One wording for "absent" and "not yours".
    return MCPError(types.INVALID_PARAMS, f"Unknown tool: {name[:200]}")


def error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


class _Stop(Exception):
    """A step ended the call: ``status`` for the meter, ``message`` for the caller."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Tools:
    def __init__(self, hub: Hub, services: Services, meter: Meter, admission: Admission, log: logging.Logger) -> None:
        self._hub = hub
        self._services = services
        self._meter = meter
        self._admission = admission
        self._log = log

    async def list_tools(self, caller: Caller) -> types.ListToolsResult:
        servers = sorted(s for s in caller.access.servers() if s in self._hub.servers)
        listed = await asyncio.gather(*(self._tools_of(s, caller.tenant) for s in servers))
        tools = [
            tool.model_copy(update={"name": prefixed(server, tool.name)})
            for server, found in zip(servers, listed)
            for tool in found
            if caller.access.tool(server, tool.name)
        ]
        return types.ListToolsResult(tools=tools)

    def serves(self, caller: Caller, server: str) -> bool:
        """Whether ``server`` is configured and the caller may call any of its tools."""
        return server in self._hub.servers and server in caller.access.servers()

    async def granted_tools(self, caller: Caller, server: str) -> list[types.Tool]:
        """The server's tools the caller may call (upstream names); raises what listing them raised."""
        found: list[types.Tool] = await self._hub.listing(server, caller.tenant, "tools")
        return [tool for tool in found if caller.access.tool(server, tool.name)]

    async def call_tool(self, caller: Caller, name: str, arguments: dict[str, Any] | None, call_id: str | None) -> types.CallToolResult:
        parts = split(name)
        if parts is None or parts[0] not in self._hub.servers or not caller.access.tool(*parts):
            self._meter.not_found()
            raise unknown_tool(name)
        server, tool = parts
        try:
            known = {t.name for t in await self._hub.listing(server, caller.tenant, "tools")}
        except Exception as exc:  # noqa: BLE001 - the tenant's own server failing to list its tools fails this call only
            self._log.warning("mcp server %s: tools/list failed (%s)", server, type(exc).__name__)
            known = None
        if known is not None and tool not in known:
            self._meter.not_found()
            raise unknown_tool(name)
        trace_id, parent = trace_of(caller.traceparent)
        call = ToolCall(caller.tenant, caller.principal.key_id, server, name, trace_id)
        started = time.perf_counter()
        with self._meter.span(call, parent, call_id) as span:
            try:
                if known is None:
                    raise _Stop("unavailable", f"The server of tool {name} is unavailable; try again later.")
                result = await self._admitted(call, caller, tool, arguments or {})
            except _Stop as stop:
                call.status, call.error = stop.status, stop.status
                result = error_result(stop.message)
            except Exception:
                call.status = call.error = "internal_error"
                raise
            finally:
                call.duration_s = time.perf_counter() - started
                self._meter.record(call, span)
        return result

    async def _tools_of(self, server: str, tenant: str) -> list[types.Tool]:
        try:
            tools: list[types.Tool] = await self._hub.listing(server, tenant, "tools")
            return tools
        except Exception as exc:  # noqa: BLE001 - a server that fails to list is left out of the list, nothing else
            self._log.warning("mcp server %s: tools/list failed (%s)", server, type(exc).__name__)
            return []

    async def _admitted(self, call: ToolCall, caller: Caller, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        spec = self._hub.servers[call.server].spec
        limits = spec.limits if spec.limits is not None else self._hub.options.limits
        refused = self._admission.admit(caller.tenant, call.server, limits)
        if refused is not None:
            status = "rate_limited" if refused.reason == "rate" else "concurrency_limited"
            raise _Stop(status, f"Too many calls to this server; try again in {max(1, round(refused.retry_after_s))}s.")
        try:
            return await self._governed(call, caller, tool, arguments)
        finally:
            self._admission.release(caller.tenant, call.server)

    async def _governed(self, call: ToolCall, caller: Caller, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        try:
            sent = await pii.on_arguments(self._services, caller.tenant, arguments)
        except GatewayError:
            raise _Stop("pii_unavailable", "The tool call could not be checked for personal data; it was not made.") from None
        call.pii = dict(sent.counts)
        if sent.refused:
            raise _Stop("pii_blocked", _pii_message("arguments", sent.counts))
        call.request_bytes = len(types.CallToolRequestParams(name=tool, arguments=sent.value).model_dump_json())
        if caller.tenant in self._hub.options.record_arguments:
            call.arguments = sent.value
        result = await self._upstream(call, caller, tool, sent.value)
        limit = self._hub.max_result_bytes(call.server)
        call.response_bytes = len(result.model_dump_json(by_alias=True, exclude_none=True))
        if call.response_bytes > limit:
            raise _Stop("too_large", f"The tool's result is larger than the {limit} bytes allowed.")
        try:
            back = await pii.on_result(self._services, caller.tenant, result)
        except GatewayError:
            raise _Stop("pii_unavailable", "The tool's result could not be checked for personal data; it was withheld.") from None
        for entity, n in back.counts.items():
            call.pii[entity] = call.pii.get(entity, 0) + n
        if back.refused:
            raise _Stop("pii_blocked", _pii_message("result", back.counts))
        final: types.CallToolResult = back.value
        await self._guarded(caller, final)
        if final.is_error:
            call.status = "tool_error"
        return final

    async def _guarded(self, caller: Caller, result: types.CallToolResult) -> None:
        """The tenant's guardrails over what the result says: a block withholds it."""
        try:
            verdict = await self._services.check_guardrails(caller.tenant, pii.result_texts(result))
        except Exception as exc:  # noqa: BLE001 - unchecked, the result is withheld (guardrails fail closed here)
            self._log.warning("mcp guardrails failed (%s)", type(exc).__name__)
            raise _Stop("guardrail_unavailable", "The tool's result could not be checked by the guardrails; it was withheld.") from None
        if verdict is not None:
            raise _Stop("guardrail_blocked", f"The tool's result was withheld by guardrail {verdict}.")

    async def _upstream(self, call: ToolCall, caller: Caller, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        timeout = self._hub.timeout_s(call.server)
        upstream = self._hub.upstream(call.server, caller.tenant)
        try:
            async with asyncio.timeout(timeout):
                async with upstream.use() as client:
                    return await client.call_tool(tool, arguments)
        except TimeoutError:
            raise _Stop("timeout", f"The tool did not answer within {timeout:g}s.") from None
        except UpstreamUnavailable:
            raise _Stop("unavailable", f"The server of tool {call.tool} is unavailable; try again later.") from None
        except MCPError as exc:
            raise _Stop("upstream_error", f"The tool's server answered with an error (code {exc.code}).") from None
        except Exception as exc:  # noqa: BLE001 - a malformed answer, a dead connection: this call fails, nothing else
            self._log.warning("mcp server %s: tools/call failed (%s)", call.server, type(exc).__name__)
            raise _Stop("upstream_error", "The tool's server failed or sent a malformed result.") from None


def _pii_message(where: str, counts: dict[str, int]) -> str:
    found = ", ".join(f"{entity} ({n})" for entity, n in sorted(counts.items()))
    return f"The tool call's {where} contain personal data that policy does not allow: {found}."
