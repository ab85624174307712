"""The plugin's servers as the Responses API's ``mcp`` tools see them: by label, within the caller's grants, metered."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import msgspec
from sluicegate_mcp.options import Options
from sluicegate_mcp.plugin import McpPlugin

from core.config import TenantConfig
from core.principal import Principal
from tests.plugins.mcp.fakes import FakeServices

ROOT = Path(__file__).resolve().parents[3]


class GrantingServices(FakeServices):
    """Tenant ``acme`` may use ``local``'s ``pid`` tool only; every other tenant nothing."""

    def tenant_config(self, tenant: str) -> TenantConfig | None:
        if tenant != "acme":
            return None
        return msgspec.convert({"id": "acme", "mcp_tools": ["local/pid"]}, TenantConfig)


def _plugin(services: FakeServices) -> McpPlugin:
    local = {"name": "local", "command": sys.executable, "args": ["-m", "tests.fakes.mcp_stdio"], "cwd": str(ROOT)}
    return McpPlugin(msgspec.convert({"servers": [local], "timeout_s": 10}, Options), services)


async def test_a_label_lists_the_granted_tools_and_calls_them_through_the_tool_path() -> None:
    services = GrantingServices(action="off")
    plugin = _plugin(services)
    provider = plugin.tool_provider()
    acme, other = Principal(tenant="acme", key_id="k"), Principal(tenant="other", key_id="k")
    assert await provider.list_tools(acme, "local") is None  # not started: no servers
    await plugin.start()
    try:
        listing = await asyncio.wait_for(provider.list_tools(acme, "local"), 30)
        assert listing is not None and listing.error is None
        assert [t.name for t in listing.tools] == ["pid"]
        assert listing.tools[0].input_schema["type"] == "object"
        # Another tenant's server and a missing one are alike: absent.
        assert await provider.list_tools(other, "local") is None
        assert await provider.list_tools(acme, "ghost") is None
        result = await provider.call_tool(acme, "local", "pid", {}, trace_id="ab" * 16)
        assert not result.is_error and result.output.isdigit()
        refused = await provider.call_tool(acme, "local", "secret", {})
        assert refused.is_error and refused.output == "Unknown tool: local__secret"
        audited = [e for e in services.events if e[1] == "mcp.tool_call"]
        for _ in range(50):
            if audited:
                break
            await asyncio.sleep(0.05)
            audited = [e for e in services.events if e[1] == "mcp.tool_call"]
        assert audited and audited[0][4]["tool"] == "local__pid" and audited[0][4]["trace_id"] == "ab" * 16
    finally:
        await plugin.close()
    assert await provider.list_tools(acme, "local") is None
