"""Connections to the upstream MCP servers: opened on first use, replaced after a failure, closed with the plugin.

An ``Upstream`` is one server under one set of credentials (the server's own,
or a tenant's when it has some). Its connection is an ``mcp`` ``Client``
held open by a task of its own (the SDK's transports must be entered and
left in one task). A call that fails as a broken connection would (the
connection closed, a transport error) retires the connection: calls already
running on it finish, the next call opens a new one. A server that cannot be
reached in ``connect_timeout_s`` fails that call only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from sluicegate_mcp.options import ServerSpec

CLIENT_INFO = types.Implementation(name="sluicegate-mcp", version="0.1.0")
# An upstream list walk stops after this many pages: a paginator that never ends cannot hang a call.
MAX_PAGES = 50
# Codes the SDK gives a request whose connection went away (the transport closed, the stream ended).
_BROKEN_CODES = frozenset({types.CONNECTION_CLOSED})


class UpstreamUnavailable(Exception):
    """The server could not be reached (or its process started) in time."""


@dataclass(slots=True)
class ChangeNotice:
    """An upstream server said one of its lists changed (``kind``: tools, prompts or resources)."""

    server: str
    kind: str


class _Connection:
    """One open client and the calls using it; retired, it closes once they are done."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.inflight = 0
        self.retired = False

    def retire(self) -> None:
        self.retired = True
        if self.inflight == 0:
            self.stop.set()

    def release(self) -> None:
        self.inflight -= 1
        if self.retired and self.inflight == 0:
            self.stop.set()


class Upstream:
    """One upstream server under one credential set."""

    def __init__(
        self,
        spec: ServerSpec,
        *,
        headers: dict[str, str],
        env: dict[str, str],
        connect_timeout_s: float,
        max_event_bytes: int,
        on_change: Callable[[ChangeNotice], None],
        log: logging.Logger,
    ) -> None:
        self.spec = spec
        self._headers = headers
        self._env = env
        self._connect_timeout_s = connect_timeout_s
        self._max_event_bytes = max_event_bytes
        self._on_change = on_change
        self._log = log
        self._current: _Connection | None = None
        self._lock = asyncio.Lock()
        self._all: set[_Connection] = set()
        # Why the last connection failed or ended (an exception's type, never its text); None once one opens.
        self.last_error: str | None = None

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Client]:
        """The open client for one call; a failure that means a broken connection retires it."""
        conn = await self._connection()
        conn.inflight += 1
        try:
            assert conn.client is not None
            yield conn.client
        except MCPError as exc:
            if exc.code in _BROKEN_CODES:
                self._retire(conn)
            raise
        except (Exception, asyncio.CancelledError):
            # A transport error, a timeout: the connection may be stuck mid-message; the next call gets a fresh one.
            self._retire(conn)
            raise
        finally:
            conn.release()

    async def close(self) -> None:
        """Close every connection (a stdio server's process ends with its connection)."""
        for conn in list(self._all):
            conn.retired = True
            conn.stop.set()
        tasks = [c.task for c in self._all if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for task in pending:
                task.cancel()
        self._current = None

    def _retire(self, conn: _Connection) -> None:
        conn.retire()
        if self._current is conn:
            self._current = None

    async def _connection(self) -> _Connection:
        async with self._lock:
            conn = self._current
            if conn is not None and not conn.retired and conn.task is not None and not conn.task.done():
                return conn
            conn = _Connection()
            self._all.add(conn)
            conn.task = asyncio.create_task(self._hold(conn), name=f"mcp-upstream-{self.spec.name}")
            try:
                await asyncio.wait_for(conn.ready.wait(), self._connect_timeout_s)
            except TimeoutError:
                conn.retire()
                conn.task.cancel()
                self.last_error = "ConnectTimeout"
                raise UpstreamUnavailable(f"server {self.spec.name} did not answer in {self._connect_timeout_s:g}s") from None
            if conn.client is None:
                raise UpstreamUnavailable(f"server {self.spec.name} could not be reached")
            self._current = conn
            self.last_error = None
            return conn

    async def _hold(self, conn: _Connection) -> None:
        try:
            async with AsyncExitStack() as stack:
                if self.spec.url is not None:
                    # No read timeout here: every call has its own deadline, and a GET stream may stay open.
                    timeout = httpx2.Timeout(self._connect_timeout_s, read=None)
                    http = await stack.enter_async_context(httpx2.AsyncClient(headers=self._headers, timeout=timeout))
                    transport = streamable_http_client(self.spec.url, http_client=http, max_sse_event_size=self._max_event_bytes)
                else:
                    assert self.spec.command is not None
                    params = StdioServerParameters(command=self.spec.command, args=list(self.spec.args), env=self._env, cwd=self.spec.cwd)
                    transport = stdio_client(params)
                client = Client(transport, mode=self.spec.protocol, cache=None, client_info=CLIENT_INFO, message_handler=self._on_message)
                await stack.enter_async_context(client)
                conn.client = client
                conn.ready.set()
                await conn.stop.wait()
        except Exception as exc:  # noqa: BLE001 - a server that fails to start or dies fails its calls, nothing else
            # The type only: an error's text may quote a URL's credentials or the server's output.
            self._log.warning("mcp server %s: connection ended (%s)", self.spec.name, type(exc).__name__)
            self.last_error = failure_type(exc)
        finally:
            conn.retired = True
            conn.ready.set()
            self._all.discard(conn)
            if self._current is conn:
                self._current = None

    async def _on_message(self, message: types.ServerNotification | Exception) -> None:
        if isinstance(message, Exception):
            return
        kinds = {
            types.ToolListChangedNotification: "tools",
            types.PromptListChangedNotification: "prompts",
            types.ResourceListChangedNotification: "resources",
        }
        for cls, kind in kinds.items():
            if isinstance(message, cls):
                self._on_change(ChangeNotice(self.spec.name, kind))


def failure_type(exc: BaseException) -> str:
    """The type of what failed: a task group's first error rather than its group (the SDK's transports run in one)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__


async def all_tools(client: Client) -> list[types.Tool]:
    found: list[types.Tool] = []
    if client.server_capabilities.tools is None:
        return found
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        found.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return found


async def all_prompts(client: Client) -> list[types.Prompt]:
    found: list[types.Prompt] = []
    if client.server_capabilities.prompts is None:
        return found
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_prompts(cursor=cursor)
        found.extend(page.prompts)
        cursor = page.next_cursor
        if not cursor:
            break
    return found


async def all_resources(client: Client) -> list[types.Resource]:
    found: list[types.Resource] = []
    if client.server_capabilities.resources is None:
        return found
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_resources(cursor=cursor)
        found.extend(page.resources)
        cursor = page.next_cursor
        if not cursor:
            break
    return found


async def all_resource_templates(client: Client) -> list[types.ResourceTemplate]:
    found: list[types.ResourceTemplate] = []
    if client.server_capabilities.resources is None:
        return found
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_resource_templates(cursor=cursor)
        found.extend(page.resource_templates)
        cursor = page.next_cursor
        if not cursor:
            break
    return found
