from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import traceback

import pytest

from router.logs import JsonFormatter, _uncaught, _uncaught_in_thread, configure, log_config, loop_exception_handler


def _format(record: logging.LogRecord) -> str:
    return JsonFormatter().format(record)


def _record(msg: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    record = logging.LogRecord("sluicegate.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_client_text_cannot_start_a_line_of_its_own() -> None:
    forged = 'x\n{"level": "error", "msg": "forged"}\r\n'
    line = _format(_record("field %s", forged, fields=[forged]))
    assert "\n" not in line and "\r" not in line
    entry = json.loads(line)
    assert entry["msg"] == "field " + forged and entry["fields"] == [forged] and entry["level"] == "warning"


def test_values_the_encoder_cannot_take_are_still_one_escaped_line() -> None:
    line = _format(_record("m", thing=object(), broken="\ud800\n"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["broken"] == "\\ud800\n" and entry["thing"].startswith("<object")


def test_exceptions_are_logged_by_type_and_frames_never_by_message() -> None:
    prompt = "confidential " + "prompt text"
    try:
        raise KeyError(prompt)
    except KeyError as exc:
        line = _format(_record("failed", exc=exc))
    entry = json.loads(line)
    assert entry["exc_type"] == "KeyError" and "test_logs.py" in entry["stack"]
    assert "confidential" not in line


def test_server_config_routes_every_logger_through_the_json_formatter() -> None:
    config = log_config("warning")
    assert config["root"]["level"] == "WARNING"
    assert config["formatters"]["json"]["()"].endswith("JsonFormatter")
    assert all(not spec["handlers"] and spec["propagate"] for spec in config["loggers"].values())


def test_access_lines_are_info_lines_whatever_the_level_and_can_be_turned_off() -> None:
    assert log_config("error")["loggers"]["sluicegate.access"]["level"] == "INFO"
    assert log_config("debug", access_log=False)["loggers"]["sluicegate.access"]["level"] == "CRITICAL"


# Built so that no source line a stack quotes holds it whole.
_SECRET = "sk-live-" + "plan" + "ted"


def _secret_error() -> ValueError:
    try:
        raise ValueError(_SECRET)
    except ValueError as exc:
        return exc


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(_format(record)) for record in caplog.records]


def test_event_loop_errors_are_logged_by_type_never_by_the_task_repr(caplog: pytest.LogCaptureFixture) -> None:
    exc = _secret_error()
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR):
            loop_exception_handler(loop, {"message": f"Task exception was never retrieved {exc!r}", "exception": exc})
            loop_exception_handler(loop, {"message": f"Exception in callback f({_SECRET!r})"})
    finally:
        loop.close()
    lines = _lines(caplog)
    assert [line["exc_type"] for line in lines if "exc_type" in line] == ["ValueError"]
    assert all(_SECRET not in json.dumps(line) for line in lines)


def test_uncaught_exceptions_are_json_lines_by_type(caplog: pytest.LogCaptureFixture) -> None:
    exc = _secret_error()
    with caplog.at_level(logging.ERROR):
        _uncaught(ValueError, exc, exc.__traceback__)
        thread = threading.Thread(name="t1")
        _uncaught_in_thread(threading.ExceptHookArgs((ValueError, exc, exc.__traceback__, thread)))  # type: ignore[call-arg]
    lines = _lines(caplog)
    assert [line["exc_type"] for line in lines] == ["ValueError", "ValueError"]
    assert all(_SECRET not in json.dumps(line) for line in lines)


def test_configure_sends_warnings_and_uncaught_exceptions_to_the_log() -> None:
    saved = (sys.excepthook, threading.excepthook, logging.root.handlers[:], logging.root.level)
    try:
        configure("info")
        assert sys.excepthook is _uncaught and threading.excepthook is _uncaught_in_thread and not logging.raiseExceptions
        assert isinstance(logging.root.handlers[0].formatter, JsonFormatter)
        assert logging.getLogger("sluicegate.access").isEnabledFor(logging.INFO)
    finally:
        logging.captureWarnings(False)
        logging.raiseExceptions = True
        sys.excepthook, threading.excepthook = saved[0], saved[1]
        logging.root.handlers[:] = saved[2]
        logging.root.setLevel(saved[3])
        logging.getLogger("sluicegate.access").setLevel(logging.NOTSET)


async def test_a_gateway_that_fails_to_start_is_logged_by_type_and_the_server_sees_no_message(caplog: pytest.LogCaptureFixture) -> None:
    from router.app import StartupFailed, create_app
    from router.gateway import Gateway
    from tests.conftest import make_config

    config = make_config("http://127.0.0.1:9/v1")
    gateway = Gateway(config)

    async def fail() -> None:
        raise _secret_error()

    gateway.start = fail  # type: ignore[method-assign]
    app = create_app(config, gateway)
    with caplog.at_level(logging.CRITICAL), pytest.raises(BaseExceptionGroup) as raised:
        async with app.lifespan():
            pass
    failed = raised.value.exceptions[0]
    # What Litestar formats for the ASGI server, which logs it as the message of a line.
    assert isinstance(failed, StartupFailed) and failed.__suppress_context__ and failed.__cause__ is None
    text = "".join(traceback.format_exception(raised.value))
    assert _SECRET not in text and "ValueError" in text
    lines = _lines(caplog)
    assert [line["exc_type"] for line in lines] == ["ValueError"] and all(_SECRET not in json.dumps(line) for line in lines)
