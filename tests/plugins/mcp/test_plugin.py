"""The plugin's life: credentials resolved at start (a missing one refuses it, by key), metrics in and out, a clean close."""

from __future__ import annotations

import msgspec
import pytest
from prometheus_client import generate_latest
from sluicegate_mcp.options import Options
from sluicegate_mcp.plugin import McpPlugin

from core.config import ConfigError
from tests.plugins.mcp.fakes import FakeServices


def _plugin(services: FakeServices, servers: list[dict[str, object]]) -> McpPlugin:
    return McpPlugin(msgspec.convert({"servers": servers}, Options), services)  # type: ignore[arg-type]


async def test_a_credential_that_does_not_resolve_refuses_the_start_naming_the_key() -> None:
    services = FakeServices()
    plugin = _plugin(services, [{"name": "docs", "url": "http://127.0.0.1:9/mcp", "headers": {"X-Key": {"env": "MCP_TEST_UNSET_1"}}}])
    with pytest.raises(ConfigError, match=r"options\.servers\[0\]\.headers\.X-Key.*MCP_TEST_UNSET_1"):
        await plugin.start()
    await plugin.close()
    assert b"sluicegate_mcp" not in generate_latest(services.registry)


async def test_start_registers_the_metrics_and_close_takes_them_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_TEST_KEY", "k")
    services = FakeServices()
    plugin = _plugin(services, [{"name": "docs", "url": "http://127.0.0.1:9/mcp", "headers": {"X-Key": {"env": "MCP_TEST_KEY"}}}])
    await plugin.start()
    assert plugin.asgi() is not None
    assert b"sluicegate_mcp_audit_dropped_total" in generate_latest(services.registry)
    await plugin.close()
    assert b"sluicegate_mcp" not in generate_latest(services.registry)
