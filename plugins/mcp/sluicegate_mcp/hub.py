"""The upstream servers of one plugin instance: their connections by credential set, and their cached lists.

A tenant with credentials of its own for a server (``tenant_headers``,
``tenant_env``) gets a connection (a process, for stdio) of its own; every
other tenant shares the server's. Lists (tools, prompts, resources, resource
templates) are fetched on demand, kept ``catalog_ttl_s``, and dropped when the
server says they changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mcp import Client

from sluicegate_mcp.options import Options, ServerSpec, has_tenant_credentials, resolve_env, resolve_headers
from sluicegate_mcp.upstream import (
    ChangeNotice,
    Upstream,
    all_prompts,
    all_resource_templates,
    all_resources,
    all_tools,
)

LISTS: dict[str, Callable[[Client], Awaitable[list[Any]]]] = {
    "tools": all_tools,
    "prompts": all_prompts,
    "resources": all_resources,
    "resource_templates": all_resource_templates,
}


@dataclass(slots=True)
class _Cached:
    value: list[Any]
    until: float


@dataclass(slots=True)
class Server:
    """One configured server: its spec, its position in the config (for error keys), its connections."""

    spec: ServerSpec
    index: int
    shared: Upstream
    by_tenant: dict[str, Upstream] = field(default_factory=dict)


class Hub:
    """Every upstream server of the plugin's options."""

    def __init__(self, options: Options, log: logging.Logger, on_change: Callable[[ChangeNotice], None]) -> None:
        self.options = options
        self._log = log
        self._on_change = on_change
        self._lists: dict[tuple[str, str | None, str], _Cached] = {}
        self.servers: dict[str, Server] = {}
        for index, spec in enumerate(options.servers):
            self.servers[spec.name] = Server(spec, index, self._upstream(spec, index, None))

    def check(self) -> None:
        """Resolve every credential reference now, so that one that does not resolve refuses the start."""
        for server in self.servers.values():
            resolve_headers(server.spec, server.index, None)
            resolve_env(server.spec, server.index, None)
            for tenant in {*server.spec.tenant_headers, *server.spec.tenant_env}:
                resolve_headers(server.spec, server.index, tenant)
                resolve_env(server.spec, server.index, tenant)

    def upstream(self, server: str, tenant: str | None) -> Upstream:
        """The connection ``tenant``'s calls to ``server`` use (None: the server's own, shared one)."""
        entry = self.servers[server]
        if tenant is None or not has_tenant_credentials(entry.spec, tenant):
            return entry.shared
        if tenant not in entry.by_tenant:
            entry.by_tenant[tenant] = self._upstream(entry.spec, entry.index, tenant)
        return entry.by_tenant[tenant]

    def timeout_s(self, server: str) -> float:
        spec = self.servers[server].spec
        return spec.timeout_s if spec.timeout_s is not None else self.options.timeout_s

    def max_result_bytes(self, server: str) -> int:
        spec = self.servers[server].spec
        return spec.max_result_bytes if spec.max_result_bytes is not None else self.options.max_result_bytes

    async def listing(self, server: str, tenant: str | None, kind: str) -> list[Any]:
        """One of the server's lists (``LISTS``), cached; raises what fetching it raised."""
        upstream = self.upstream(server, tenant)
        key = (server, tenant if upstream is not self.servers[server].shared else None, kind)
        cached = self._lists.get(key)
        now = time.monotonic()
        if cached is not None and cached.until > now:
            return cached.value
        async with asyncio.timeout(self.timeout_s(server)):
            async with upstream.use() as client:
                value = await LISTS[kind](client)
        self._lists[key] = _Cached(value, now + self.options.catalog_ttl_s)
        return value

    def forget(self, notice: ChangeNotice) -> None:
        """Drop a server's cached list after it said the list changed."""
        kinds = ("resources", "resource_templates") if notice.kind == "resources" else (notice.kind,)
        for key in [k for k in self._lists if k[0] == notice.server and k[2] in kinds]:
            del self._lists[key]

    async def close(self) -> None:
        ups = [u for s in self.servers.values() for u in (s.shared, *s.by_tenant.values())]
        await asyncio.gather(*(u.close() for u in ups), return_exceptions=True)

    def _upstream(self, spec: ServerSpec, index: int, tenant: str | None) -> Upstream:
        headers = resolve_headers(spec, index, tenant) if spec.url is not None else {}
        env = resolve_env(spec, index, tenant) if spec.command is not None else {}
        limit = spec.max_result_bytes if spec.max_result_bytes is not None else self.options.max_result_bytes
        return Upstream(
            spec,
            headers=headers,
            env=env,
            connect_timeout_s=self.options.connect_timeout_s,
            # An event a little over the result limit is refused by the transport itself, before it is all buffered.
            max_event_bytes=2 * limit + 64 * 1024,
            on_change=self._notice,
            log=self._log,
        )

    def _notice(self, notice: ChangeNotice) -> None:
        self.forget(notice)
        self._on_change(notice)
