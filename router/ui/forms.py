"""HTML forms to the admin API's input types, with the API's own validation.

A form field is named by its path in the API's JSON body (``limits.rpm``,
``budgets[0].limit``), so a validation error's path names the field it belongs
to. Values arrive as text; ``msgspec.convert(..., strict=False)`` turns them into
the API's types and applies every one of its constraints. Empty fields are left
out, as a JSON body would leave them out.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from litestar.datastructures import FormMultiDict

from core.errors import GatewayError

T = TypeVar("T")
_PATH = re.compile(r"at `\$\.([^`]+)`")
_PART = re.compile(r"([^.\[\]]+)(?:\[(\d+)\])?")


class FieldError(Exception):
    """Input the API would refuse: the message, and the form field it is about (None: the whole form)."""

    def __init__(self, message: str, field: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status

    @classmethod
    def of(cls, exc: GatewayError) -> FieldError:
        return cls(exc.message, exc.param, exc.status)

    def as_dict(self) -> dict[str, str]:
        return {self.field or "_form": self.message}


def convert(data: dict[str, Any], kind: type[T]) -> T:
    """``data`` as ``kind``, validated as the admin API validates a request body."""
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _PATH.search(text)
        raise FieldError(f"Invalid value: {text}.", found.group(1) if found else None, 400) from None


def nested(form: FormMultiDict, *, lists: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """The form's fields as the nested dict of their paths; ``lists`` hold comma-separated values, ``flags`` are checkboxes."""
    out: dict[str, Any] = {}
    for name in form:
        if name == "csrf" or name.startswith("_"):
            continue
        values = [v for v in form.getall(name) if isinstance(v, str)]
        value: Any = values[0].strip() if len(values) == 1 else [v.strip() for v in values]
        if value == "":
            continue
        if name in lists or _leaf(name) in lists:
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        _put(out, name, value)
    for flag in flags:
        if flag not in form:
            _put(out, flag, False)
        else:
            _put(out, flag, True)
    compacted: dict[str, Any] = _compact(out)
    return compacted


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _put(out: dict[str, Any], path: str, value: Any) -> None:
    try:
        _place(out, path, value)
    except (TypeError, AttributeError):
        # Two fields whose paths collide ("limits" and "limits.rpm"): no form of the console sends them.
        raise FieldError(f"The field {path[:64]!r} does not fit the form.", path, 400) from None


def _place(out: dict[str, Any], path: str, value: Any) -> None:
    node: Any = out
    parts = _PART.findall(path)
    for i, (key, index) in enumerate(parts):
        last = i == len(parts) - 1
        if index:
            items = node.setdefault(key, {})
            if last:
                items[int(index)] = value
            else:
                node = items.setdefault(int(index), {})
        elif last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def _compact(node: Any) -> Any:
    """Index maps (``{0: ..., 2: ...}``) become lists in index order."""
    if isinstance(node, dict):
        if node and all(isinstance(k, int) for k in node):
            return [_compact(node[k]) for k in sorted(node)]
        return {k: _compact(v) for k, v in node.items()}
    return node
