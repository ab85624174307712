"""Request bytes --> validated request, with OpenAI-shaped 4xx errors for bad input."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import msgspec

from router.errors import InvalidRequest
from router.wire import FIELDS, Request

log = logging.getLogger("sluicegate.decode")

_object_decoder = msgspec.json.Decoder(dict[str, Any])
_MAX_LOGGED_UNKNOWN = 256
_logged_unknown: set[str] = set()

R = TypeVar("R", bound=Request)


def decode_body(body: bytes, kind: type[R]) -> tuple[dict[str, Any], R, int]:
    """Return the raw object (relayed upstream), the validated view and the number of unknown fields."""
    if not body:
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        raw = _object_decoder.decode(body)
    except msgspec.ValidationError:
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    model = raw.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` must be a non-empty string.", param="model", code="invalid_type")
    try:
        request = msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc)) from None
    unknown = raw.keys() - FIELDS[kind]  # type: ignore[index]  # R is one of FIELDS' keys
    if unknown:
        _log_unknown(kind.__name__, unknown)
    return raw, request, len(unknown)


def _validation_error(message: str) -> InvalidRequest:
    text, sep, where = message.rpartition(" - at ")
    if not sep:
        missing = message.partition("required field `")[2].rstrip("`")
        if missing:
            return InvalidRequest(
                f"Missing required parameter: '{missing}'.", param=missing, code="missing_required_parameter"
            )
        return InvalidRequest(f"Invalid request: {message}", code="invalid_value")
    param = where.strip("`").removeprefix("$").removeprefix(".")
    missing = text.partition("required field `")[2].rstrip("`")
    if missing:
        full = f"{param}.{missing}" if param else missing
        return InvalidRequest(f"Missing required parameter: '{full}'.", param=full, code="missing_required_parameter")
    code = "invalid_type" if text.startswith("Expected `") and ", got `" in text else "invalid_value"
    return InvalidRequest(f"Invalid value for '{param}': {text}.", param=param, code=code)


def _log_unknown(kind: str, names: set[str]) -> None:
    # Log each unknown field name once per process (bounded); values are never logged.
    fresh = [n for n in names if n not in _logged_unknown][: max(0, _MAX_LOGGED_UNKNOWN - len(_logged_unknown))]
    if fresh:
        _logged_unknown.update(fresh)
        log.info("passing through fields not modelled for %s: %s", kind, ", ".join(sorted(n[:64] for n in fresh)))
