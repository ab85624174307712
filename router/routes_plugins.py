"""Plugins' HTTP routes: each installed plugin's ``http_prefix`` is mounted at start and served by the live instance.

The mounts are made for every installed plugin that declares a prefix, so a
config version that enables one serves its routes at once; while no serving
version enables it, its prefix answers 404. The plugin's app sees the request
as the client sent it (the path still starts with the prefix).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from litestar.handlers import asgi
from litestar.handlers.asgi_handlers import ASGIRouteHandler

from core.errors import NotFound, error_body
from core.plugin import ASGIApp, Plugin
from router.plugins import discover
from router.snapshot import Snapshot

log = logging.getLogger("sluicegate.plugins")


def prefixes() -> dict[str, list[str]]:
    """Installed plugins' route prefixes, by plugin name (a plugin that fails to import has none here)."""
    found: dict[str, list[str]] = {}
    for name, ep in discover().items():
        try:
            cls = ep.load()
        except Exception as exc:  # reported by the config check when the plugin is enabled
            log.warning("plugin %s could not be imported for its routes: %s", name, type(exc).__name__)
            continue
        declared = getattr(cls, "http_prefix", None) if isinstance(cls, type) and issubclass(cls, Plugin) else None
        wanted = [declared] if isinstance(declared, str) else list(declared or ())
        valid = [p.rstrip("/") for p in wanted if isinstance(p, str) and p.startswith("/") and len(p.rstrip("/")) > 1]
        if valid:
            found[name] = valid
    return found


def mounts(current: Callable[[], Snapshot]) -> list[ASGIRouteHandler]:
    """One mount per installed plugin prefix, dispatching to the serving version's instance."""
    handlers = []
    taken: set[str] = set()
    for name, wanted in sorted(prefixes().items()):
        for prefix in wanted:
            if prefix in taken:
                log.warning("plugin %s wants prefix %s, which another plugin has; that prefix is not mounted for it", name, prefix)
                continue
            taken.add(prefix)
            handlers.append(_mount(name, prefix, current))
    return handlers


def _mount(name: str, prefix: str, current: Callable[[], Snapshot]) -> ASGIRouteHandler:
    apps: dict[int, ASGIApp | None] = {}  # by instance: an app is made once per instance (and per prefix)

    async def serve(scope: Any, receive: Any, send: Any) -> None:
        plugin = current().plugins.by_name.get(name)
        app = None
        if plugin is not None:
            key = id(plugin)
            if key not in apps:
                apps.clear()  # the previous instance's app goes with it
                apps[key] = plugin.asgi()
            app = apps[key]
        if app is None:
            body = error_body(NotFound(f"Unknown request URL: {scope.get('method', 'GET')} {prefix}."))
            await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if isinstance(raw, bytes) else prefix + scope["path"].rstrip("/")
        await app({**scope, "path": path, "root_path": ""}, receive, send)

    return asgi(path=prefix, is_mount=True, name=f"plugin-{name}{prefix.replace('/', '-')}")(serve)
