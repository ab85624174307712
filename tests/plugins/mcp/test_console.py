"""The mcp plugin's console panel: servers up and down, their tools, and grants, as an operator and a tenant admin see them.

A real stdio server (tests/fakes/mcp_stdio.py, tools ``pid``, ``secret``, ``die``)
and an HTTP server nobody listens on. Tenant ``globex`` has credentials of its
own on ``local`` (so the plugin knows of it) and every tool of both servers;
``acme`` has ``local/pid`` only, and a key narrowed to nothing.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import sluicegate_mcp.console as console
from sluicegate_mcp.options import Options
from sluicegate_mcp.plugin import McpPlugin

from core.config import TenantConfig
from core.console_panel import ConsolePanel, PanelView, PanelViewer
from core.errors import InvalidRequest, Overloaded
from tests.plugins.mcp.fakes import FakeServices

ROOT = Path(__file__).resolve().parents[3]
OPERATOR = PanelViewer(tenant=None, write=True, actor="ops/admin")
ACME = PanelViewer(tenant="acme", write=True, actor="acme/admin")
TENANTS = {
    "acme": {"id": "acme", "mcp_tools": ["local/pid"], "keys": [{"id": "acme-narrow", "hash": "hmac-sha256:" + "0" * 64, "mcp_tools": []}]},
    "globex": {"id": "globex", "mcp_tools": ["local/*", "down/*", "gone/*"]},
}


class TenantServices(FakeServices):
    def tenant_config(self, tenant: str) -> TenantConfig | None:
        entry = TENANTS.get(tenant)
        return None if entry is None else msgspec.convert(entry, TenantConfig)


def _plugin() -> McpPlugin:
    local = {
        "name": "local", "command": sys.executable, "args": ["-m", "tests.fakes.mcp_stdio"], "cwd": str(ROOT),
        "tenant_env": {"globex": {"MCP_STDIO_SECRET": {"env": "MCP_CONSOLE_TEST_SECRET"}}},
    }  # fmt: skip
    down = {"name": "down", "url": "http://user:pw@127.0.0.1:9/mcp?token=not-for-the-page", "limits": {"rpm": 5}}
    return McpPlugin(msgspec.convert({"servers": [local, down], "timeout_s": 30}, Options), TenantServices(action="off"))


@pytest.fixture
async def panel(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ConsolePanel]:
    monkeypatch.setenv("MCP_CONSOLE_TEST_SECRET", "s3cret-value")
    monkeypatch.setattr(console, "PROBE_S", 30.0)  # a stdio server's first start may be slow on a busy machine
    plugin = _plugin()
    (found,) = plugin.console_panels()
    await plugin.start()
    try:
        yield found
    finally:
        await plugin.close()


def _rows(view: PanelView, section: str) -> dict[str, list[str]]:
    return {row.id: row.cells for s in view.sections if s.id == section for row in s.rows}


async def test_a_tenant_admin_sees_only_their_granted_servers_tools_and_grants(panel: ConsolePanel) -> None:
    for params in ({}, {"tenant": "globex"}):
        view = await panel.view(ACME, params)
        assert list(_rows(view, "servers")) == ["local"] and _rows(view, "servers")["local"][2:4] == ["up", "1"]
        assert list(_rows(view, "tools")) == ["local/pid"]
        assert _rows(view, "grants") == {
            "acme": ["acme", "(every key)", "local/pid", "local"],
            "acme/acme-narrow": ["acme", "acme-narrow", "none", "none"],
        }
        encoded = msgspec.json.encode(view).decode()
        assert "globex" not in encoded and "down" not in encoded and "secret" not in encoded
        assert view.filters == [] and not any(r.actions for s in view.sections for r in s.rows)


async def test_an_operator_sees_every_server_its_state_and_the_known_tenants_grants(panel: ConsolePanel) -> None:
    view = await panel.view(OPERATOR, {})
    servers = _rows(view, "servers")
    assert servers["local"] == ["local", "stdio", "up", "3", "none"]
    name, transport, status, tools, limits = servers["down"]
    assert transport == "http (http://127.0.0.1:9)" and status.startswith("down: ") and tools == "" and limits == "5/min"
    assert "token" not in msgspec.json.encode(view).decode() and "pw" not in transport
    assert list(_rows(view, "tools")) == ["local/pid", "local/secret", "local/die"]
    grants = _rows(view, "grants")
    assert list(grants) == ["globex"], "known through its own credentials on `local`"
    assert grants["globex"][2:] == ["local/*, down/*, gone/*", "down, gone (not configured), local"]
    named = await panel.view(OPERATOR, {"tenant": "acme"})
    assert list(_rows(named, "grants")) == ["acme", "acme/acme-narrow", "globex"]
    nobody = _rows(await panel.view(OPERATOR, {"tenant": "nobody"}), "grants")
    assert nobody["nobody"][2] == "(no such tenant in the config)"


async def test_the_panel_is_read_only_and_refuses_bad_input(panel: ConsolePanel) -> None:
    with pytest.raises(InvalidRequest):
        await panel.act(OPERATOR, "grant", "acme")
    with pytest.raises(InvalidRequest):
        await panel.view(OPERATOR, {"tenant": "x" * 200})


async def test_before_start_the_panel_is_unavailable() -> None:
    (panel,) = _plugin().console_panels()
    assert (panel.name, panel.title, panel.operators_only) == ("mcp", "MCP servers", False)
    with pytest.raises(Overloaded):
        await panel.view(OPERATOR, {})
