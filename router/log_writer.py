"""Log lines written by a thread of their own, so that a slow stream never stalls the event loop.

A ``write()`` to stderr is a system call that can block: on a pipe whose
reader (the container runtime, a log shipper) falls behind, or on a file
while the kernel writes pages back. Made from the event loop, once per
request for the access log, each such stall holds up every request in
flight: measured under a fixed request rate here, these writes were most of
what the loop was doing whenever it stalled for more than a millisecond.

``BackgroundStreamHandler`` is a ``StreamHandler`` that formats on the
caller's thread (a line's text never changes) and only queues it; a daemon
thread writes what has queued, joined into one write, every
``interval_s`` (at once for a warning or worse, or once ``burst_lines`` are
waiting), and flushes the stream. A round that finds nothing to write puts
the thread to sleep until the next line comes (written at once then), so the writer of a gateway
that logs nothing (the access log off, no warnings) never wakes, where a
timer would wake it, and take the GIL from the event loop, twenty times a
second. Lines keep their order. ``flush()`` writes what is queued at once, on
the calling thread: ``logging.shutdown`` calls it at exit, so a process that
ends normally loses nothing; one that is killed loses at most the last
``interval_s`` of lines. A stream that stays blocked cannot grow memory
without bound: past ``max_lines`` waiting, new lines are dropped and counted
(``dropped``), as a log shipper's buffer does.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from typing import TextIO

_INTERVAL_S = 0.05
_BURST_LINES = 256
_MAX_LINES = 100_000


class BackgroundStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` whose writes happen on a thread of its own (see the module's docstring)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        interval_s: float = _INTERVAL_S,
        burst_lines: int = _BURST_LINES,
        max_lines: int = _MAX_LINES,
    ) -> None:
        super().__init__(stream)
        self.interval_s = interval_s
        self.burst_lines = burst_lines
        self.max_lines = max_lines
        self.dropped = 0
        self._lines: deque[str] = deque()  # append and popleft are atomic: no lock between the threads
        self._wake = threading.Event()  # write now: a warning, a burst, close(), or a line for an idle thread
        self._idle = False  # the thread sleeps on _wake for want of lines (set by the thread only)
        self._write_lock = threading.Lock()  # one writer at a time: the thread, or flush() on any thread
        self._thread: threading.Thread | None = None  # started by the first line, in each process
        self._closed = False
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forked(ref))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - as logging's own emit: the handler reports it
            self.handleError(record)
            return
        self.enqueue(text, urgent=record.levelno >= logging.WARNING)

    def enqueue(self, text: str, urgent: bool = False) -> None:
        """Queue ``text`` (whole lines, ending in a newline) for the writer thread; ``urgent`` wakes it now."""
        lines = self._lines
        if len(lines) >= self.max_lines:
            self.dropped += 1
            return
        lines.append(text)  # before _idle is read: see _run
        if self._thread is None:
            self._start()
        if urgent or self._idle or len(lines) >= self.burst_lines:
            self._wake.set()

    def _start(self) -> None:
        with self._write_lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
            self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child: no writer thread yet, a lock no parent thread holds, and none of the parent's lines
        (the parent writes those)."""
        self._lines.clear()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = False
        self._thread = None

    def _run(self) -> None:
        wake, lines = self._wake, self._lines
        while not self._closed:
            wake.wait(self.interval_s)
            wake.clear()
            if self._write_queued() or self._closed:
                continue
            # A round with nothing to write: sleep until a line comes. _idle is set before the queue is looked at,
            # and enqueue appends before it reads _idle, so either this sees the line or enqueue sees _idle.
            self._idle = True
            if not lines:
                wake.wait()  # left set: the next round writes the line that woke it at once
            self._idle = False

    def _write_queued(self) -> int:
        """Write what is queued in one write; the number of lines taken."""
        with self._write_lock:
            lines = self._lines
            count = len(lines)
            if not count:
                return 0
            text = "".join([lines.popleft() for _ in range(count)])
            stream = self.stream
            try:
                stream.write(text)
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed or broken stream: the lines are lost, never raised
                self.dropped += text.count("\n")
            return count

    def flush(self) -> None:
        """Write what is queued now, on the calling thread, and flush the stream."""
        self._write_queued()
        with self._write_lock:
            stream = self.stream
            if stream is not None and hasattr(stream, "flush"):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - as StreamHandler.flush on a closed stream
                    pass

    def setStream(self, stream: TextIO) -> TextIO | None:  # noqa: N802 - logging's name
        """Write what was queued for the old stream to it first."""
        self._write_queued()
        return super().setStream(stream)

    def close(self) -> None:
        self._write_queued()
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        super().close()


def _forked(ref: weakref.ReferenceType[BackgroundStreamHandler]) -> None:
    handler = ref()
    if handler is not None:
        handler._after_fork()


def dropped_lines() -> int:
    """Lines the root logger's background handlers have dropped so far (a blocked stream, a full queue)."""
    return sum(h.dropped for h in logging.getLogger().handlers if isinstance(h, BackgroundStreamHandler))
