"""Gateway names: every tool, prompt and resource carries its server's name, and splits back unambiguously."""

from __future__ import annotations

import pytest
from sluicegate_mcp.names import prefixed, prefixed_uri, split, split_uri, valid_server_name


@pytest.mark.parametrize("server", ["docs", "a", "my_docs", "my-docs", "A1_b2-c3"])
@pytest.mark.parametrize("tool", ["search", "_private", "a__b", "dotted.name", "x-y", "__"])
def test_a_prefixed_name_splits_back(server: str, tool: str) -> None:
    assert split(prefixed(server, tool)) == (server, tool)


@pytest.mark.parametrize("server", ["", "a__b", "_a", "a_", "a.b", "a+b", "a/b", "a b", "x" * 65])
def test_server_names_that_would_be_ambiguous_are_not_valid(server: str) -> None:
    assert not valid_server_name(server)


@pytest.mark.parametrize("name", ["", "echo", "docs__", "__echo", "a.b__c", "a+b__c"])
def test_a_name_that_names_no_server_does_not_split(name: str) -> None:
    assert split(name) is None


@pytest.mark.parametrize("uri", ["file:///readme.md", "https://example.com/a?b=c+d", "db://x+y/z", "docs+file:///a"])
def test_a_prefixed_uri_splits_back(uri: str) -> None:
    assert split_uri(prefixed_uri("docs", uri)) == ("docs", uri)
    assert prefixed_uri("docs", uri).startswith("docs+")


@pytest.mark.parametrize("uri", ["file:///readme.md", "+file:///a", "docs+", "bad_+x"])
def test_a_uri_that_names_no_server_does_not_split(uri: str) -> None:
    assert split_uri(uri) is None
