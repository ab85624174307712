"""The C open-loop client (``bench/openloop.c``) against a small local server: framing, errors, and timing from the due time."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from bench.openloop import Run, run_openloop

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")

RATE, DURATION = 200, 1.0
TOTAL = int(RATE * DURATION)
STALL_AT = 60  # the request on /stall after which the server stops for STALL_S
STALL_S = 0.2
PAYLOAD = b'{"ok":true,"text":"' + b"x" * 300 + b'"}'


def _chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class Server:
    """Answers by path: ``/length`` a Content-Length body; ``/chunked`` a chunked body in many small, spaced writes;
    ``/fail`` a 500 for every fourth request; ``/drop`` half of every fifth answer, then a reset or a close; ``/close`` each
    answer with ``Connection: close``; ``/slow`` after 20 ms; ``/stall`` at once, except that the
    ``STALL_AT``-th request stops the whole server for ``STALL_S``."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.connections = 0
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()  # asyncio.run then cancels the connections' tasks

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                path = lines[0].split()[1]
                length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "content-length")
                await reader.readexactly(length)
                self.counts[path] += 1
                if not await self._answer(path, self.counts[path], writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, path: str, number: int, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection ends with it."""
        if path == "/chunked":
            # split anywhere: inside the size lines, between CR and LF, in the body
            wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"
            wire += _chunked([b"data: " + bytes([97 + i]) * (10 + 7 * i) + b"\n\n" for i in range(6)])
            for start in range(0, len(wire), 23):
                writer.write(wire[start : start + 23])
                await writer.drain()
                if start % 69 == 0:
                    await asyncio.sleep(0.001)
            return True
        if path == "/drop" and number % 5 == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(PAYLOAD), PAYLOAD[:40]))
            await writer.drain()
            if number % 10 == 0:  # every other one a reset (RST), the rest a plain close (FIN)
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(PAYLOAD), PAYLOAD))
            await writer.drain()
            return False
        if path == "/slow":
            await asyncio.sleep(0.02)
        if path == "/stall" and number == STALL_AT:
            time.sleep(STALL_S)  # blocks the server's loop: nothing is read or answered meanwhile
        status = b"500 Internal Server Error" if path == "/fail" and number % 4 == 0 else b"200 OK"
        writer.write(b"HTTP/1.1 %s\r\nContent-Length: %d\r\ncontent-type: application/json\r\n\r\n%s" % (status, len(PAYLOAD), PAYLOAD))
        await writer.drain()
        return True


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


def _run(server: Server, path: str, *, connections: int = 256, warmup: int = 64) -> Run:
    url = f"http://127.0.0.1:{server.port}{path}"
    headers = {"Content-Type": "application/json"}
    return run_openloop(url, b'{"model":"m"}', headers, rate=RATE, duration_s=DURATION, connections=connections, warmup=warmup)


def test_content_length_answers_are_all_timed_and_plausible(server: Server) -> None:
    run = _run(server, "/length", connections=32)
    assert (len(run.latencies), run.errors, run.sent) == (TOTAL, 0, TOTAL)
    assert server.counts["/length"] == TOTAL + 64  # and the warm-up, sent first
    assert all(0 < ms < 100 for ms in run.latencies)
    assert 0 <= run.late_ms < 50


def test_chunked_answers_split_across_writes_are_read_to_their_end(server: Server) -> None:
    run = _run(server, "/chunked", connections=32)
    assert (len(run.latencies), run.errors) == (TOTAL, 0)
    # Each answer lasts at least the server's five pauses between its writes; and had the client stopped
    # short, the rest of an answer would have reached an idle connection, which the client then reopens.
    assert min(run.latencies) > 4.5
    assert server.connections == 32


def test_non_2xx_answers_are_errors(server: Server) -> None:
    run = _run(server, "/fail", warmup=0)
    assert len(run.latencies) + run.errors == TOTAL
    assert run.errors == TOTAL // 4


def test_a_connection_broken_mid_answer_is_an_error_and_is_opened_again(server: Server) -> None:
    run = _run(server, "/drop", connections=2, warmup=0)
    assert (len(run.latencies), run.errors) == (TOTAL - TOTAL // 5, TOTAL // 5)


def test_a_server_that_closes_after_each_answer_is_followed(server: Server) -> None:
    run = _run(server, "/close", connections=4, warmup=0)
    assert (len(run.latencies), run.errors) == (TOTAL, 0)


def test_latency_includes_the_server_delay(server: Server) -> None:
    run = _run(server, "/slow")
    assert (len(run.latencies), run.errors) == (TOTAL, 0)
    assert min(run.latencies) >= 20.0
    assert run.pct(0.5) < 100


def test_a_stall_is_charged_to_every_request_due_during_it(server: Server) -> None:
    # One connection: requests due while the server is stopped wait in the client's queue. Timed from when
    # they went out, most would look fast; timed from when they were due, each carries its share of the stall.
    run = _run(server, "/stall", connections=1, warmup=0)
    assert (len(run.latencies), run.errors) == (TOTAL, 0)
    slow = sorted(ms for ms in run.latencies if ms > 20)
    assert slow[-1] >= STALL_S * 1000 * 0.9
    # about STALL_S * RATE requests fall due during the stall, their waits spread from ~200 ms down to ~0
    assert len(slow) >= 0.6 * STALL_S * RATE
    assert len([ms for ms in slow if ms > 100]) >= 0.3 * STALL_S * RATE


def test_an_unreachable_server_is_reported() -> None:
    from bench.processes import free_port

    with pytest.raises(RuntimeError, match="cannot connect"):
        run_openloop(f"http://127.0.0.1:{free_port()}/", b"", {}, rate=10, duration_s=0.5)
