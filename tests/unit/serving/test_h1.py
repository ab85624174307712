"""The pooled HTTP/1.1 client against real sockets: a scriptable asyncio server on loopback."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from serving.h1 import BadResponse, ConnectError, Disconnected, H1Pool, PoolTimeout

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


class Server:
    """Reads each request (head and content-length body) and lets ``handler`` answer; it returns False to close."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.handler(head + body, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def echo(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    writer.write(ok(request.split(b"\r\n\r\n", 1)[1]))
    await writer.drain()
    return True


def pool(url: str, *, limit: int = 4, connect_s: float = 2.0, read_s: float = 5.0, total_s: float = 10.0) -> H1Pool:
    return H1Pool(url, limit=limit, connect_s=connect_s, read_s=read_s, total_s=total_s)


HEADERS = {"content-type": "application/json", "authorization": "Bearer k"}


async def test_posts_a_body_and_reads_the_answer_on_one_kept_alive_connection() -> None:
    async with Server(echo) as server:
        client = pool(server.url)
        head = client.head(b"POST", "/v1/chat/completions", HEADERS)
        for i in range(5):
            response = await client.request(head, b'{"n": %d}' % i, {"traceparent": "00-abc"})
            assert response.status == 200
            assert response.headers["content-type"] == "application/json"
            assert await response.read() == b'{"n": %d}' % i
        assert server.connections == 1
        first = server.requests[0]
        assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nhost: 127.0.0.1:%d\r\n" % server.port in first
        assert b"\r\nauthorization: Bearer k\r\n" in first and b"\r\ntraceparent: 00-abc\r\n" in first
        await client.close()


async def test_a_chunked_stream_arrives_piece_by_piece_and_the_connection_is_reused() -> None:
    gate = asyncio.Event()

    async def chunked(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(3):
            data = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            if i == 0:
                await gate.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    async with Server(chunked) as server:
        client = pool(server.url)
        head = client.head(b"POST", "/v1/chat/completions", HEADERS)
        for _ in range(2):
            gate.clear()
            response = await client.request(head, b"{}")
            pieces = []
            async for piece in response.chunks():
                pieces.append(piece)
                gate.set()  # the first piece came before the rest was written
            assert b"".join(pieces) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            assert pieces[0] == b"data: 0\n\n"
        assert server.connections == 1
        await client.close()


async def test_a_body_delimited_by_the_end_of_the_connection() -> None:
    async def until_close(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n{\"a\": 1}")
        await writer.drain()
        return False

    async with Server(until_close) as server:
        client = pool(server.url)
        head = client.head(b"POST", "/x", HEADERS)
        for _ in range(2):
            response = await client.request(head, b"{}")
            assert await response.read() == b'{"a": 1}'
        assert server.connections == 2  # never reused
        assert client.open_connections == 0
        await client.close()


async def test_an_abandoned_stream_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def endless(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while True:
                writer.write(b"5\r\nhello\r\n")
                await writer.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            closed.set()
            return False

    async with Server(endless) as server:
        client = pool(server.url)
        response = await client.request(client.head(b"POST", "/x", HEADERS), b"{}")
        stream = response.chunks()
        assert (await anext(stream)).startswith(b"hello")
        await stream.aclose()
        await asyncio.wait_for(closed.wait(), 5)
        assert client.open_connections == 0
        await client.close()


async def test_a_busy_pool_makes_the_next_request_wait_then_time_out() -> None:
    release = asyncio.Event()

    async def slow(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        return await echo(request, reader, writer)

    async with Server(slow) as server:
        client = pool(server.url, limit=1, connect_s=0.2)
        head = client.head(b"POST", "/x", HEADERS)
        first = asyncio.ensure_future(client.request(head, b"1"))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolTimeout):
            await client.request(head, b"2")
        # A waiter that gets the connection in time is served on it.
        waiting = asyncio.ensure_future(client.request(head, b"3"))
        await asyncio.sleep(0.05)
        release.set()
        assert await (await first).read() == b"1"
        assert await (await waiting).read() == b"3"
        assert server.connections == 1
        await client.close()


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with Server(echo) as server:
        url = server.url
    await asyncio.sleep(0.05)
    client = pool(url)
    with pytest.raises(ConnectError):
        await client.request(client.head(b"POST", "/x", HEADERS), b"{}")
    assert client.open_connections == 0


async def test_an_upstream_silent_past_the_read_timeout_times_out() -> None:
    async def silent(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with Server(silent) as server:
        client = pool(server.url, read_s=0.2)
        with pytest.raises(TimeoutError):
            await client.request(client.head(b"POST", "/x", HEADERS), b"{}")
        assert client.open_connections == 0
        await client.close()


async def test_a_stream_that_stalls_mid_body_times_out_on_the_read_timeout() -> None:
    async def stalls(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)
        return False

    async with Server(stalls) as server:
        client = pool(server.url, read_s=0.2)
        response = await client.request(client.head(b"POST", "/x", HEADERS), b"{}")
        got = []
        with pytest.raises(TimeoutError):
            async for piece in response.chunks():
                got.append(piece)
        assert got == [b"hello"]
        await client.close()


async def test_an_idle_connection_the_upstream_closed_is_not_reused() -> None:
    async def once(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await echo(request, reader, writer)
        return False  # closes after answering, without saying so

    async with Server(once) as server:
        client = pool(server.url)
        head = client.head(b"POST", "/x", HEADERS)
        for i in range(3):
            assert await (await client.request(head, b"%d" % i)).read() == b"%d" % i
            await asyncio.sleep(0.02)
        assert server.connections == 3
        await client.close()


async def test_a_request_racing_the_close_of_an_idle_connection_is_sent_again() -> None:
    async def once(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await echo(request, reader, writer)
        return False

    async with Server(once) as server:
        client = pool(server.url)
        head = client.head(b"POST", "/x", HEADERS)
        assert await (await client.request(head, b"a")).read() == b"a"
        # No pause: the close may not have been seen when the next request goes out on the same connection.
        assert await (await client.request(head, b"b")).read() == b"b"
        await client.close()


async def test_an_upstream_that_closes_mid_answer_is_disconnected() -> None:
    async def cut(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        return False

    async with Server(cut) as server:
        client = pool(server.url)
        response = await client.request(client.head(b"POST", "/x", HEADERS), b"{}")
        with pytest.raises(Disconnected):
            await response.read()
        assert client.open_connections == 0
        await client.close()


async def test_garbage_is_a_bad_response() -> None:
    async def garbage(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)
        return False

    async with Server(garbage) as server:
        client = pool(server.url)
        with pytest.raises(BadResponse):
            await client.request(client.head(b"POST", "/x", HEADERS), b"{}")
        await client.close()


async def test_a_large_body_is_read_whole_under_flow_control() -> None:
    big = b"x" * (3 * 1024 * 1024)

    async def large(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(big))
        await writer.drain()
        return True

    async with Server(large) as server:
        client = pool(server.url)
        response = await client.request(client.head(b"POST", "/x", HEADERS), b"{}")
        total = 0
        async for piece in response.chunks():
            total += len(piece)
            await asyncio.sleep(0)
        assert total == len(big)
        assert await (await client.request(client.head(b"POST", "/x", HEADERS), b"{}")).read() == big
        assert server.connections == 1
        await client.close()


async def test_concurrent_requests_share_the_pool_within_its_limit() -> None:
    async def delayed(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.01)
        return await echo(request, reader, writer)

    async with Server(delayed) as server:
        client = pool(server.url, limit=3)
        head = client.head(b"POST", "/x", HEADERS)

        async def one(i: int) -> bytes:
            return await (await client.request(head, b"%d" % i)).read()

        answers = await asyncio.gather(*(one(i) for i in range(30)))
        assert answers == [b"%d" % i for i in range(30)]
        assert server.connections <= 3
        await client.close()


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    release = asyncio.Event()

    async def slow(request: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        return await echo(request, reader, writer)

    async with Server(slow) as server:
        client = pool(server.url, limit=1)
        head = client.head(b"POST", "/x", HEADERS)
        first = asyncio.ensure_future(client.request(head, b"1"))
        await asyncio.sleep(0.05)
        cancelled = asyncio.ensure_future(client.request(head, b"2"))
        third = asyncio.ensure_future(client.request(head, b"3"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        release.set()
        assert await (await first).read() == b"1"
        assert await (await third).read() == b"3"
        assert cancelled.cancelled()
        await client.close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and ``localhost``, and its key, made with ``cryptography``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_https_with_a_trusted_certificate_and_refused_without(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    server = await asyncio.start_server(lambda r, w: Server(echo)._serve(r, w), "127.0.0.1", 0, ssl=served)
    port = server.sockets[0].getsockname()[1]
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        client = H1Pool(f"https://localhost:{port}/v1", limit=2, connect_s=2.0, read_s=5.0, total_s=10.0, ssl_context=trusting)
        head = client.head(b"POST", "/v1/chat/completions", HEADERS)
        for i in range(3):
            assert await (await client.request(head, b"%d" % i)).read() == b"%d" % i
        assert client.open_connections == 1
        await client.close()
        # The system's trust store does not know this certificate: no connection, nothing sent.
        untrusting = H1Pool(f"https://localhost:{port}/v1", limit=2, connect_s=2.0, read_s=5.0, total_s=10.0)
        with pytest.raises(ConnectError):
            await untrusting.request(head, b"x")
        await untrusting.close()
    finally:
        server.close()
