"""Request bytes --> validated request, with OpenAI-shaped 4xx errors for bad input."""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar

import msgspec

from core.errors import InvalidRequest
from router.wire import FIELDS, Request

log = logging.getLogger("sluicegate.decode")

# Nesting deeper than this is refused: no OpenAI request comes near it (tool and
# response-format schemas nest a few dozen levels at most), while every walker
# downstream (PII, token counting, re-encoding for the upstream) must stay far
# from the interpreter's recursion limit.
MAX_JSON_DEPTH = 128
_object_decoder = msgspec.json.Decoder(dict[str, Any])
_MAX_LOGGED_UNKNOWN = 256
# Unknown field names are logged only when they look like an API's field names:
# lower-case words, no digits. Anything else a client put there (a key pasted as
# a name, text with line breaks) is counted, never written to the log.
_LOGGABLE_NAME = re.compile(r"[a-z][a-z_]{0,47}")
_logged_unknown: set[str] = set()

R = TypeVar("R", bound=Request)


def too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The request body nests JSON deeper than the limit of {MAX_JSON_DEPTH} levels.", code="invalid_json"
    )


def decode_object(body: bytes) -> dict[str, Any]:
    """A JSON object from a request body, or a 400 that says what is wrong with it."""
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        raw = _object_decoder.decode(body)
    except msgspec.ValidationError:
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise too_deep() from None
    # Each level opens with a bracket, so a body with few brackets cannot be deep:
    # two byte counts (in C) spare almost every request the walk.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and nesting_exceeds(raw, MAX_JSON_DEPTH):
        raise too_deep()
    return raw


def nesting_exceeds(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """Whether containers nest more than ``limit`` deep (the outermost is level 1); no recursion."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return True
        for child in container.values() if type(container) is dict else container:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def decode_body(body: bytes, kind: type[R]) -> tuple[dict[str, Any], R, int]:
    """Return the raw object (relayed upstream), the validated view and the number of unknown fields."""
    raw = decode_object(body)
    model = raw.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` must be a non-empty string.", param="model", code="invalid_type")
    try:
        request = msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    unknown = raw.keys() - FIELDS[kind]  # type: ignore[index]  # R is one of FIELDS' keys
    if unknown:
        log_unknown(kind.__name__, unknown)
    return raw, request, len(unknown)


# msgspec quotes the value it refused for an enum or a tagged union's tag: the client's
# text (a key pasted in the wrong field), never echoed back.
_QUOTED_VALUE = re.compile(r"^(Invalid (?:enum )?value) .*$", re.DOTALL)


def validation_error(message: str) -> InvalidRequest:
    text, sep, where = message.rpartition(" - at ")
    text = _QUOTED_VALUE.sub(r"\1", text if sep else message)
    if not sep:
        missing = text.partition("required field `")[2].rstrip("`")
        if missing:
            return InvalidRequest(
                f"Missing required parameter: '{missing}'.", param=missing, code="missing_required_parameter"
            )
        return InvalidRequest(f"Invalid request: {text}", code="invalid_value")
    param = where.strip("`").removeprefix("$").removeprefix(".")
    missing = text.partition("required field `")[2].rstrip("`")
    if missing:
        full = f"{param}.{missing}" if param else missing
        return InvalidRequest(f"Missing required parameter: '{full}'.", param=full, code="missing_required_parameter")
    code = "invalid_type" if text.startswith("Expected `") and ", got `" in text else "invalid_value"
    return InvalidRequest(f"Invalid value for '{param}': {text}.", param=param, code=code)


def log_unknown(kind: str, names: set[str]) -> None:
    # Each loggable unknown field name is logged once per process (bounded); values never are.
    if len(_logged_unknown) >= _MAX_LOGGED_UNKNOWN:
        return
    fresh = sorted(n for n in names if n not in _logged_unknown and _LOGGABLE_NAME.fullmatch(n))
    fresh = fresh[: _MAX_LOGGED_UNKNOWN - len(_logged_unknown)]
    if fresh:
        _logged_unknown.update(fresh)
        log.info("passing through fields not modelled", extra={"request_kind": kind, "fields": fresh})
