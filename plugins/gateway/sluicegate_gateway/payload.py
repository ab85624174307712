"""Reading a decoded JSON payload by path; a missing or mistyped field is a 400 that names it (never its value)."""

from __future__ import annotations

from typing import Any

from core.errors import InvalidRequest


class MalformedEvent(InvalidRequest):
    code = "invalid_event"


def _name(path: tuple[str, ...]) -> str:
    return ".".join(path)


class Doc:
    """A JSON object and typed, required-or-optional access to what is under it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def _find(self, path: tuple[str, ...]) -> tuple[bool, Any]:
        node: Any = self.data
        for i, part in enumerate(path):
            if not isinstance(node, dict):
                raise MalformedEvent(f"The event's `{_name(path[:i])}` must be an object.", param=_name(path[:i]))
            if part not in node:
                return False, None
            node = node[part]
        return True, node

    def _opt(self, path: tuple[str, ...], kind: type) -> Any:
        """The value at ``path`` (None when missing or null); a value of another type is refused."""
        found, value = self._find(path)
        if not found or value is None:
            return None
        # bool is an int subclass: a flag is never a number here.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise MalformedEvent(f"The event's `{_name(path)}` must be {_TYPE_NAMES[kind]}.", param=_name(path))
        return value

    def _need(self, path: tuple[str, ...], kind: type) -> Any:
        value = self._opt(path, kind)
        if value is None:
            raise MalformedEvent(f"The event has no `{_name(path)}`.", param=_name(path))
        if kind is str and not value:
            raise MalformedEvent(f"The event's `{_name(path)}` is empty.", param=_name(path))
        return value

    def text(self, *path: str) -> str:
        return str(self._need(path, str))

    def opt_text(self, *path: str) -> str | None:
        value = self._opt(path, str)
        return None if value is None else str(value)

    def number(self, *path: str) -> int:
        return int(self._need(path, int))

    def opt_number(self, *path: str) -> int | None:
        value = self._opt(path, int)
        return None if value is None else int(value)

    def has_object(self, *path: str) -> bool:
        """Whether there is an object (not null, not missing) at ``path``."""
        return self._opt(path, dict) is not None

    def names(self, path: tuple[str, ...], field: str) -> list[str]:
        """The ``field`` of each object of the list at ``path`` (label names); missing: none."""
        items = self._opt(path, list) or []
        found: list[str] = []
        for i, item in enumerate(items):
            value = item.get(field) if isinstance(item, dict) else None
            if not isinstance(value, str):
                where = f"{_name(path)}[{i}].{field}"
                raise MalformedEvent(f"The event's `{where}` must be a string.", param=where)
            found.append(value)
        return found


_TYPE_NAMES: dict[type, str] = {str: "a string", int: "an integer", list: "a list", dict: "an object", bool: "true or false"}
