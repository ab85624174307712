from __future__ import annotations

import json
import logging

from router.logs import JsonFormatter, log_config


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
