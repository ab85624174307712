"""The plugin's options: strict, one transport per server, credentials by reference and resolved by name."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from sluicegate_mcp.options import Options, resolve_env, resolve_headers

from core.config import ConfigError


def decode(raw: dict[str, Any]) -> Options:
    return msgspec.convert(raw, Options)


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ([{"name": "a"}], "exactly one of `url` or `command`"),
        ([{"name": "a", "url": "http://x/mcp", "command": "x"}], "exactly one of `url` or `command`"),
        ([{"name": "a", "url": "http://x/mcp"}, {"name": "a", "command": "x"}], "used twice"),
        ([{"name": "a__b", "url": "http://x/mcp"}], "name"),
        ([{"name": "a", "url": "http://x/mcp", "env": {"K": {"env": "V"}}}], "stdio"),
        ([{"name": "a", "command": "x", "headers": {"K": {"env": "V"}}}], "HTTP"),
        ([{"name": "a", "url": "http://x/mcp", "headers": {"Authorization": "Bearer literal"}}], "headers"),
        ([{"name": "a", "url": "http://x/mcp", "surprise": 1}], "surprise"),
    ],
)
def test_bad_servers_are_refused_naming_the_problem(servers: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        decode({"servers": servers})


def test_credentials_resolve_per_tenant_and_name_the_key_not_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_T_SHARED", "shared-value")
    monkeypatch.setenv("MCP_T_ACME", "acme-value")
    options = decode({"servers": [
        {"name": "docs", "url": "https://docs/mcp", "headers": {"X-Key": {"env": "MCP_T_SHARED"}},
         "tenant_headers": {"acme": {"X-Key": {"env": "MCP_T_ACME"}}, "globex": {"X-Key": {"env": "MCP_T_MISSING"}}}},
        {"name": "files", "command": "srv", "env": {"TOKEN": {"env": "MCP_T_SHARED"}}},
    ]})  # fmt: skip
    docs, files = options.servers
    assert resolve_headers(docs, 0, None) == {"X-Key": "shared-value"}
    assert resolve_headers(docs, 0, "acme") == {"X-Key": "acme-value"}
    assert resolve_headers(docs, 0, "initech") == {"X-Key": "shared-value"}
    assert resolve_env(files, 1, None) == {"TOKEN": "shared-value"}
    with pytest.raises(ConfigError) as missing:
        resolve_headers(docs, 0, "globex")
    assert "options.servers[0].tenant_headers.globex.X-Key" in str(missing.value) and "MCP_T_MISSING" in str(missing.value)
    assert "value" not in str(missing.value)
