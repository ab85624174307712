"""Structured logs: one JSON object per line, so nothing a client sends can forge a line.

Every value goes through the JSON encoder, which escapes line breaks and control
characters; fields passed with ``extra=`` become keys of their own rather than
text spliced into the message. An exception is logged by its type and stack
frames, never its message: messages can quote request data.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import sys
import threading
import traceback
from types import TracebackType
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


# Whatever ``server.log_level`` says, access lines are info lines: ``server.access_log`` turns them off.
ACCESS_LOGGER = "sluicegate.access"


def log_config(level: str, access_log: bool = True) -> dict[str, Any]:
    """``logging.config.dictConfig`` settings for the server (uvicorn applies them in every worker)."""
    upper = level.upper()
    loggers: dict[str, Any] = {
        name: {"handlers": [], "level": upper, "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    }
    loggers[ACCESS_LOGGER] = {"handlers": [], "level": "INFO" if access_log else "CRITICAL", "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        # Written by a thread of its own (``router.log_writer``): a slow stderr never stalls the event loop.
        "handlers": {"stderr": {"class": "router.log_writer.BackgroundStreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": upper},
        "loggers": loggers,
    }


def configure(level: str, access_log: bool = True) -> None:
    """JSON lines for everything this process logs, warns or fails with (the CLI, ``worker``, ``serve``)."""
    logging.config.dictConfig(log_config(level, access_log))
    capture_process_errors()


def capture_process_errors() -> None:
    """Warnings and uncaught exceptions (main thread, other threads) as JSON lines, by type and stack.

    Python prints these itself, in plain text and with the exception's message;
    uvicorn's workers call this from the app factory, since they configure
    logging from ``log_config`` alone.
    """
    logging.captureWarnings(True)
    # A handler that cannot write (a closed pipe) would print the record's message and arguments, in plain text.
    logging.raiseExceptions = False
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("sluicegate").critical("uncaught exception: %s", kind.__name__, exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("sluicegate").error("uncaught exception in thread %s: %s", name, args.exc_type.__name__, exc_info=args.exc_value)


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's unhandled errors (a task's exception never retrieved, a failing callback).

    asyncio's own handler writes the task's or callback's repr, which quotes the
    exception's message and the callback's arguments: here only the type and stack.
    """
    exc = context.get("exception")
    if isinstance(exc, BaseException):
        logging.getLogger("asyncio").error("unhandled error in the event loop: %s", type(exc).__name__, exc_info=exc)
    else:
        logging.getLogger("asyncio").error("unhandled error in the event loop")
