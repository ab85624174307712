"""Grants: default deny; ``server/tool`` and ``server/*``; a key narrows its tenant's grants, never widens them."""

from __future__ import annotations

import msgspec
import pytest
from sluicegate_mcp.grants import NO_ACCESS, Access, GrantSet, access_for

from core.config import TenantConfig

HASH = "hmac-sha256:" + "0" * 64


def tenant(grants: list[str], keys: dict[str, list[str] | None]) -> TenantConfig:
    entries = [{"id": k, "hash": HASH, **({} if g is None else {"mcp_tools": g})} for k, g in keys.items()]
    return msgspec.convert({"id": "acme", "mcp_tools": grants, "keys": entries}, TenantConfig)


def test_nothing_is_granted_by_default() -> None:
    access = access_for(tenant([], {"k": None}), "k")
    assert not access.tool("docs", "search") and not access.whole_server("docs") and access.servers() == frozenset()
    assert access_for(None, "k") is NO_ACCESS and not NO_ACCESS.tool("docs", "search")


def test_a_tool_grant_allows_that_tool_only() -> None:
    access = Access(GrantSet.parse(["docs/search"]))
    assert access.tool("docs", "search")
    assert not access.tool("docs", "delete") and not access.tool("other", "search")
    # Prompts and resources need the whole server.
    assert not access.whole_server("docs")
    assert access.servers() == frozenset({"docs"})


def test_a_server_grant_allows_every_tool_prompt_and_resource_of_that_server() -> None:
    access = Access(GrantSet.parse(["docs/*"]))
    assert access.tool("docs", "search") and access.tool("docs", "anything") and access.whole_server("docs")
    assert not access.tool("docs2", "search") and not access.whole_server("doc")


def test_a_key_narrows_its_tenants_grants() -> None:
    config = tenant(["docs/*", "files/read"], {"wide": None, "narrow": ["docs/search"], "widening": ["files/*", "crm/*"], "none": []})
    wide, narrow = access_for(config, "wide"), access_for(config, "narrow")
    assert wide.tool("docs", "delete") and wide.tool("files", "read")
    assert narrow.tool("docs", "search") and not narrow.tool("docs", "delete") and not narrow.tool("files", "read")
    assert not narrow.whole_server("docs") and narrow.servers() == frozenset({"docs"})
    # A key's grants never add to its tenant's.
    widening = access_for(config, "widening")
    assert widening.tool("files", "read") and not widening.tool("files", "write") and not widening.tool("crm", "x")
    assert widening.servers() == frozenset({"files"})
    # An empty list on a key: nothing.
    assert access_for(config, "none").servers() == frozenset()


def test_a_key_the_config_does_not_name_has_its_tenants_grants() -> None:
    config = tenant(["docs/search"], {"k": ["docs/other"]})
    assert access_for(config, "jwt:someone").tool("docs", "search")


@pytest.mark.parametrize("grant", ["docs", "docs/", "/search", "docs/a/b", "do cs/x", "docs/sea rch", "*/*", "docs/**"])
def test_a_malformed_grant_is_refused_by_the_config(grant: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="mcp_tools"):
        tenant([grant], {})
