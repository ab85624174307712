"""How upstream names become the gateway's: every tool, prompt and resource carries its server's name.

A tool ``search`` of the server ``docs`` is ``docs__search`` at the gateway
(``SEPARATOR``: letters, digits, ``_``, ``-`` and ``.`` are all a tool name
may hold, and many model APIs refuse a dot). A server's name never holds
``__`` nor ends with ``_``, so the first ``__`` of a gateway name always ends
the server's. A resource URI ``file:///a.md`` of ``docs`` is ``docs+file:///a.md``
(server names hold no ``+``).
"""

from __future__ import annotations

import re

SEPARATOR = "__"
URI_SEPARATOR = "+"
# Letters, digits and "-", in runs joined by single underscores: no "__", no leading or trailing "_".
SERVER_NAME = r"^[A-Za-z0-9-]+(?:_[A-Za-z0-9-]+)*$"
_SERVER = re.compile(SERVER_NAME)
MAX_SERVER_NAME = 64


def valid_server_name(name: str) -> bool:
    return len(name) <= MAX_SERVER_NAME and _SERVER.fullmatch(name) is not None


def prefixed(server: str, name: str) -> str:
    """The gateway's name for ``name`` (a tool or prompt) of ``server``."""
    return f"{server}{SEPARATOR}{name}"


def split(name: str) -> tuple[str, str] | None:
    """(server, upstream name) of a gateway name; None when it names no server."""
    server, sep, rest = name.partition(SEPARATOR)
    if not sep or not rest or not valid_server_name(server):
        return None
    return server, rest


def prefixed_uri(server: str, uri: str) -> str:
    """The gateway's URI (or URI template) for ``uri`` of ``server``."""
    return f"{server}{URI_SEPARATOR}{uri}"


def split_uri(uri: str) -> tuple[str, str] | None:
    """(server, upstream URI) of a gateway URI; None when it names no server."""
    server, sep, rest = uri.partition(URI_SEPARATOR)
    if not sep or not rest or not valid_server_name(server):
        return None
    return server, rest
