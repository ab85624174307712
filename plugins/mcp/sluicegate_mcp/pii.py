"""A tenant's PII policy on tool calls: the strings of the arguments going out, and of the result coming back.

Every string of the arguments (at any depth) and every text of the result
(text content, an embedded text resource, the strings of structured content)
is scanned as one batch. ``redact`` and ``mask_and_restore`` put typed
placeholders in place of what was found (a tool's result is never restored);
``block`` refuses the call (arguments) or its result; ``restrict`` refuses the
arguments (no tool server counts as self-hosted) and passes results (they go
back to the tenant itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types

from core.plugin import PiiScan, Services

Path = tuple[str | int, ...]


@dataclass(slots=True)
class Outcome:
    """What the policy made of a value: the value to use, what was found, and whether the call must stop."""

    value: Any
    counts: dict[str, int] = field(default_factory=dict)
    refused: bool = False


def strings(value: Any, path: Path = ()) -> Iterator[tuple[Path, str]]:
    """Every string leaf of a JSON value, with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, (*path, i))


def replaced(value: Any, edits: dict[Path, str], path: Path = ()) -> Any:
    """A copy of ``value`` with the strings at ``edits``' paths replaced."""
    if path in edits:
        return edits[path]
    if isinstance(value, dict):
        return {k: replaced(v, edits, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [replaced(v, edits, (*path, i)) for i, v in enumerate(value)]
    return value


async def _scan(services: Services, tenant: str, value: Any) -> tuple[PiiScan, list[Path]]:
    found = list(strings(value))
    scan = await services.scan_pii(tenant, [text for _, text in found])
    return scan, [path for path, _ in found]


async def on_arguments(services: Services, tenant: str, arguments: dict[str, Any]) -> Outcome:
    scan, paths = await _scan(services, tenant, arguments)
    if not scan.counts:
        return Outcome(arguments)
    if scan.action in ("block", "restrict"):
        return Outcome(arguments, scan.counts, refused=True)
    edits = dict(zip(paths, scan.texts))
    return Outcome(replaced(arguments, edits), scan.counts)


async def on_result(services: Services, tenant: str, result: types.CallToolResult) -> Outcome:
    """The result as the policy leaves it (``value``: a ``CallToolResult``)."""
    raw = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    texts = _scannable(raw)
    scan, paths = await _scan(services, tenant, texts)
    if not scan.counts or scan.action == "restrict":
        return Outcome(result, scan.counts)
    if scan.action == "block":
        return Outcome(result, scan.counts, refused=True)
    edits = dict(zip(paths, scan.texts))
    changed = replaced(texts, edits)
    raw["content"] = _merge(raw.get("content", []), changed["content"])
    if raw.get("structuredContent") is not None:
        raw["structuredContent"] = changed["structuredContent"]
    return Outcome(types.CallToolResult.model_validate(raw), scan.counts)


def result_texts(result: types.CallToolResult) -> list[str]:
    """Every text a result says (what its PII scan and guardrails read)."""
    return [text for _, text in strings(_scannable(result.model_dump(by_alias=True, mode="json", exclude_none=True)))]


def _scannable(raw: dict[str, Any]) -> dict[str, Any]:
    """Only what a result says: content texts (not types, URIs, MIME types, base64 data) and structured content."""
    content = []
    for item in raw.get("content", []):
        if item.get("type") == "text":
            content.append({"text": item.get("text", "")})
        elif item.get("type") == "resource" and isinstance(item.get("resource"), dict) and "text" in item["resource"]:
            content.append({"resource": {"text": item["resource"]["text"]}})
        else:
            content.append({})
    return {"content": content, "structuredContent": raw.get("structuredContent")}


def _merge(content: list[dict[str, Any]], changed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item, edit in zip(content, changed):
        item = dict(item)
        if "text" in edit:
            item["text"] = edit["text"]
        elif "resource" in edit:
            item["resource"] = {**item["resource"], "text": edit["resource"]["text"]}
        out.append(item)
    return out
