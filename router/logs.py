"""Structured logs: one JSON object per line, so nothing a client sends can forge a line.

Every value goes through the JSON encoder, which escapes line breaks and control
characters; fields passed with ``extra=`` become keys of their own rather than
text spliced into the message. An exception is logged by its type and stack
frames, never its message: messages can quote request data.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import msgspec

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}
_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            kind, _, tb = record.exc_info
            entry["exc_type"] = kind.__name__
            entry["stack"] = "".join(traceback.format_tb(tb))
        try:
            return _encode(entry).decode()
        except (TypeError, ValueError, msgspec.EncodeError):
            return _encode({k: _plain(v) for k, v in entry.items()}).decode()


def _plain(value: object) -> object:
    """A value the encoder cannot take (an object in ``extra``, a lone surrogate) as safe text."""
    if isinstance(value, (int, float, bool, type(None))):
        return value
    text = value if isinstance(value, str) else repr(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def log_config(level: str) -> dict[str, Any]:
    """``logging.config.dictConfig`` settings for the server (uvicorn applies them in every worker)."""
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": upper},
        "loggers": {
            name: {"handlers": [], "level": upper, "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
