"""The tenant's PII policy on tool arguments and results."""

from __future__ import annotations

import mcp_types as types
import pytest
from sluicegate_mcp import pii

from tests.plugins.mcp.fakes import EMAIL, FakeServices


def _result(text: str, structured: dict[str, object] | None = None) -> types.CallToolResult:
    content: list[types.ContentBlock] = [
        types.TextContent(type="text", text=text),
        types.ImageContent(type="image", data="aGVsbG8=", mime_type="image/png"),
        types.EmbeddedResource(type="resource", resource=types.TextResourceContents(uri="file:///a", text=f"see {EMAIL}")),
    ]
    return types.CallToolResult(content=content, structured_content=structured)


def test_strings_walks_every_leaf_and_replaced_edits_a_copy() -> None:
    value = {"a": ["x", {"b": "y", "n": 1}], "c": "z"}
    assert list(pii.strings(value)) == [(("a", 0), "x"), (("a", 1, "b"), "y"), (("c",), "z")]
    changed = pii.replaced(value, {("a", 1, "b"): "Y"})
    assert changed == {"a": ["x", {"b": "Y", "n": 1}], "c": "z"} and value["a"][1] == {"b": "y", "n": 1}  # type: ignore[index]


async def test_arguments_are_redacted_at_any_depth() -> None:
    arguments = {"to": EMAIL, "cc": [EMAIL, "bob"], "n": 3}
    outcome = await pii.on_arguments(FakeServices("redact"), "acme", arguments)
    assert outcome.value == {"to": "<EMAIL_ADDRESS_1>", "cc": ["<EMAIL_ADDRESS_1>", "bob"], "n": 3}
    assert outcome.counts == {"EMAIL_ADDRESS": 2} and not outcome.refused
    assert arguments["to"] == EMAIL


@pytest.mark.parametrize("action", ["block", "restrict"])
async def test_arguments_with_pii_are_refused_under_block_and_restrict(action: str) -> None:
    outcome = await pii.on_arguments(FakeServices(action), "acme", {"to": EMAIL})
    assert outcome.refused and outcome.counts == {"EMAIL_ADDRESS": 1}


async def test_result_texts_are_redacted_and_everything_else_kept() -> None:
    outcome = await pii.on_result(FakeServices("redact"), "acme", _result(f"write {EMAIL}", {"owner": EMAIL}))
    result = outcome.value
    assert isinstance(result, types.CallToolResult) and not outcome.refused
    text, image, embedded = result.content
    assert isinstance(text, types.TextContent) and text.text == "write <EMAIL_ADDRESS_1>"
    assert isinstance(image, types.ImageContent) and image.data == "aGVsbG8="
    assert isinstance(embedded, types.EmbeddedResource) and isinstance(embedded.resource, types.TextResourceContents)
    assert embedded.resource.text == "see <EMAIL_ADDRESS_1>" and embedded.resource.uri == "file:///a"
    assert result.structured_content == {"owner": "<EMAIL_ADDRESS_1>"}
    assert outcome.counts == {"EMAIL_ADDRESS": 3}


async def test_a_result_is_refused_under_block_and_passed_under_restrict() -> None:
    assert (await pii.on_result(FakeServices("block"), "acme", _result(EMAIL))).refused
    passed = await pii.on_result(FakeServices("restrict"), "acme", _result(EMAIL))
    assert not passed.refused and passed.value.content[0].text == EMAIL


async def test_no_policy_changes_nothing() -> None:
    original = _result(EMAIL)
    outcome = await pii.on_result(FakeServices("off"), "acme", original)
    assert outcome.value is original and outcome.counts == {}
