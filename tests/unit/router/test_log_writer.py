"""router.log_writer: lines are written by a thread of their own, in order, and none is lost at a clean exit."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from router.log_writer import BackgroundStreamHandler, dropped_lines
from router.logs import JsonFormatter


class _BlockedStream(io.StringIO):
    """A stream whose writes wait until released: a pipe whose reader has stopped reading."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.writing = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        self.release.wait(10)
        return super().write(text)


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, (), None)


def _wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_lines_reach_the_stream_in_order_from_the_writer_thread() -> None:
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream, interval_s=0.01)
    handler.setFormatter(JsonFormatter())
    try:
        for i in range(1000):
            handler.handle(_record(f"line {i}"))
        _wait_for(lambda: stream.getvalue().count("\n") == 1000)
        import json

        assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == [f"line {i}" for i in range(1000)]
        assert handler._thread is not None and handler._thread.name == "log-writer"
    finally:
        handler.close()


def test_a_blocked_stream_never_blocks_the_caller_and_a_full_queue_drops_and_counts() -> None:
    stream = _BlockedStream()
    handler = BackgroundStreamHandler(stream, interval_s=0.001, burst_lines=1, max_lines=50)
    try:
        handler.enqueue("first\n")
        assert stream.writing.wait(5), "the writer thread took the first line"
        started = time.perf_counter()
        for i in range(200):
            handler.enqueue(f"more {i}\n")
        assert time.perf_counter() - started < 0.5, "queueing waited on the stream"
        assert handler.dropped == 150  # 50 queued behind the blocked write, the rest dropped
        stream.release.set()
        _wait_for(lambda: "more 49\n" in stream.getvalue())
        assert stream.getvalue().count("\n") == 51 and "more 50\n" not in stream.getvalue()
    finally:
        stream.release.set()
        handler.close()


def test_a_warning_wakes_the_writer_at_once() -> None:
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream, interval_s=60)  # info lines would wait a minute
    try:
        handler.handle(_record("an info line"))
        warning = logging.LogRecord("t", logging.WARNING, __file__, 1, "a warning", (), None)
        handler.handle(warning)
        _wait_for(lambda: stream.getvalue() == "an info line\na warning\n")  # in order, the info line with it
    finally:
        handler.close()


def test_an_idle_writer_sleeps_until_a_line_comes_and_then_writes_it() -> None:
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream, interval_s=0.01)
    rounds: list[int] = []
    write = handler._write_queued

    def counted() -> None:
        rounds.append(1)
        write()

    handler._write_queued = counted  # type: ignore[method-assign]
    try:
        handler.enqueue("first\n")
        _wait_for(lambda: stream.getvalue() == "first\n")
        time.sleep(0.05)  # the round that wrote it ends
        idle_from = len(rounds)
        time.sleep(0.3)  # thirty intervals with nothing queued
        assert len(rounds) == idle_from
        handler.enqueue("second\n")  # alone: nothing after it wakes the writer
        _wait_for(lambda: stream.getvalue() == "first\nsecond\n", timeout_s=2.0)
    finally:
        handler.close()


def test_a_line_queued_while_a_batch_is_taken_is_written_without_a_later_line() -> None:
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream, interval_s=0.001)
    try:
        expected = ""
        for i in range(300):  # each line alone, at every point of the writer's round
            handler.enqueue(f"{i}\n")
            expected += f"{i}\n"
            if i % 3:
                time.sleep(0.0005 * (i % 5))
            else:
                _wait_for(lambda: stream.getvalue() == expected, timeout_s=2.0)
        _wait_for(lambda: stream.getvalue() == expected, timeout_s=2.0)
    finally:
        handler.close()


class _LineAtTheLastMoment(deque[str]):
    """A queue that gets a line from ``handler`` just after the writer thread has found it empty, before it sleeps."""

    def __init__(self, handler: BackgroundStreamHandler) -> None:
        super().__init__()
        self.handler = handler
        self.armed = False

    def __len__(self) -> int:
        n = super().__len__()
        if self.armed and n == 0 and sys._getframe(1).f_code.co_name == "_run":  # the writer's look before it sleeps
            self.armed = False
            self.handler.enqueue("late\n")
        return n


def test_a_line_that_comes_as_the_writer_goes_to_sleep_wakes_it() -> None:
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream, interval_s=0.01)
    lines = _LineAtTheLastMoment(handler)
    handler._lines = lines
    try:
        handler.enqueue("first\n")  # starts the thread on this queue
        _wait_for(lambda: stream.getvalue() == "first\n")
        lines.armed = True
        _wait_for(lambda: not lines.armed)
        _wait_for(lambda: stream.getvalue() == "first\nlate\n", timeout_s=2.0)
    finally:
        handler.close()


def test_flush_writes_what_is_queued_on_the_calling_thread() -> None:
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream, interval_s=60)  # the thread would not write for a minute
    try:
        handler.enqueue("a\n")
        handler.enqueue("b\n")
        handler.flush()
        assert stream.getvalue() == "a\nb\n"
    finally:
        handler.close()


def test_a_stream_that_fails_loses_its_lines_and_counts_them_but_never_raises() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    handler = BackgroundStreamHandler(Broken(), interval_s=60)
    try:
        handler.enqueue("x\n")
        handler.enqueue("y\n")
        handler.flush()
        assert handler.dropped == 2
    finally:
        handler.close()


def test_the_root_loggers_drops_are_counted_for_the_metric() -> None:
    root = logging.getLogger()
    handler = BackgroundStreamHandler(io.StringIO(), max_lines=0)
    root.addHandler(handler)
    try:
        before = dropped_lines()
        handler.enqueue("x\n")
        assert dropped_lines() == before + 1
    finally:
        root.removeHandler(handler)
        handler.close()


def test_a_process_that_exits_normally_writes_every_line() -> None:
    """``logging.shutdown`` at exit flushes the queue: the last lines before exit are not lost."""
    code = (
        "import logging.config, sys\n"
        "from router.logs import log_config\n"
        "logging.config.dictConfig(log_config('info'))\n"
        "log = logging.getLogger('sluicegate')\n"
        "for i in range(2000): log.info('line %d', i)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = done.stderr.splitlines()
    assert len(lines) == 2000 and '"line 1999"' in lines[-1]


def test_a_forked_child_writes_its_own_lines_from_a_thread_of_its_own_and_not_the_parents(tmp_path: Path) -> None:
    out = tmp_path / "child.log"
    with out.open("w") as stream:
        handler = BackgroundStreamHandler(stream, interval_s=3600)  # nothing is written unless asked
        handler.emit(_record("parent's"))
        pid = os.fork()
        if pid == 0:  # the child: its line reaches the stream through its own writer thread
            code = 1
            try:
                handler.emit(_record("child's"))
                assert handler._thread is not None and handler._thread.is_alive()
                handler.flush()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert out.read_text() == "child's\n"  # the parent's queued line stays the parent's to write
        handler.flush()
    assert out.read_text() == "child's\nparent's\n"
    handler.close()
