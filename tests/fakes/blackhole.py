"""A TCP proxy that can turn into a black hole: connections hang instead of failing.

``BlackHole(host, port)`` listens on 127.0.0.1 and forwards to ``host:port``
until ``swallow()``: from then on it still accepts connections and reads what
they send, but never answers nor forwards a byte, as a database host does when
it stops answering without refusing. Connections made before go silent too.
``forward()`` closes the hole; the connections that went silent are reset, as
they would be once the network came back, and new ones are forwarded again.

It runs its own event loop on a thread, so synchronous tests, asynchronous
tests and gateways in subprocesses can all use it alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any


class BlackHole:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blackhole", daemon=True)
        self._server: asyncio.Server | None = None
        self._swallowing = False
        # One set per connection: its client and server transports.
        self._links: set[tuple[asyncio.Transport, ...]] = set()
        self._silenced: set[tuple[asyncio.Transport, ...]] = set()
        self.port = 0

    @property
    def dsn_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def swallow(self) -> None:
        """From now on nothing is answered or forwarded, on new and existing connections."""
        self._call(self._set(True))

    def forward(self) -> None:
        """Forward again; connections that went silent are reset."""
        self._call(self._set(False))

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, swallowing: bool) -> None:
        self._swallowing = swallowing
        if swallowing:
            self._silenced |= self._links
            return
        for link in self._silenced:
            for transport in link:
                transport.abort()
        self._silenced.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            for transport in link:
                transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        client = client_w.transport
        assert isinstance(client, asyncio.Transport)
        if self._swallowing:
            link: tuple[asyncio.Transport, ...] = (client,)
            with self._tracked(link, silenced=True):
                await self._discard(client_r)
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client.abort()
            return
        server = server_w.transport
        assert isinstance(server, asyncio.Transport)
        with self._tracked((client, server), silenced=False):
            await asyncio.gather(self._pipe(client_r, server_w, (client, server)), self._pipe(server_r, client_w, (client, server)))

    @contextlib.contextmanager
    def _tracked(self, link: tuple[asyncio.Transport, ...], silenced: bool) -> Iterator[None]:
        self._links.add(link)
        if silenced:
            self._silenced.add(link)
        try:
            yield
        finally:
            self._links.discard(link)
            self._silenced.discard(link)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: tuple[asyncio.Transport, ...]) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if link in self._silenced:
                    continue  # read and dropped: the sender sees no error, only silence
                writer.write(data)
                await writer.drain()
        for transport in link:
            transport.abort()

    @staticmethod
    async def _discard(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while await reader.read(65536):
                pass
