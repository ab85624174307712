"""What changed between two config documents, as key paths: ``models[chat].canary.state.step``."""

from __future__ import annotations

from typing import Any


def diff(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """Changes from ``old`` to ``new``: each ``{path, op: added|removed|changed, old?, new?}``.

    Lists of named records (deployments, models, tenants, keys) are compared by
    name, so inserting one shows as one addition, not a cascade of changes.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[dict[str, Any]] = []
        for key in sorted(old.keys() | new.keys()):
            where = f"{path}{key}" if key.startswith("[") else f"{path}.{key}" if path else key
            if key not in new:
                out.append({"path": where, "op": "removed", "old": old[key]})
            elif key not in old:
                out.append({"path": where, "op": "added", "new": new[key]})
            else:
                out += diff(old[key], new[key], where)
        return out
    if isinstance(old, list) and isinstance(new, list):
        named = _by_name(old), _by_name(new)
        if named[0] is not None and named[1] is not None:
            return diff(named[0], named[1], path)
        if len(old) == len(new):
            return [c for i, (a, b) in enumerate(zip(old, new)) for c in diff(a, b, f"{path}[{i}]")]
    if old == new:
        return []
    return [{"path": path, "op": "changed", "old": old, "new": new}]


def _by_name(items: list[Any]) -> dict[str, Any] | None:
    """``[name]`` keyed dict when every item is a record with a unique name, id or alias."""
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, dict):
            return None
        name = item.get("alias", item.get("id", item.get("name")))
        if not isinstance(name, str) or f"[{name}]" in out:
            return None
        out[f"[{name}]"] = item
    return out
