"""The HTTP face of ``/mcp``: the caller is authenticated on every request, before the MCP transport sees it.

The gateway is an OAuth 2.0 protected resource (RFC 9728, as the MCP
authorization spec asks): its metadata is at
``/.well-known/oauth-protected-resource`` (and ``.../mcp``), and a request
without valid credentials is 401 with ``WWW-Authenticate: Bearer
resource_metadata="..."``. Credentials are the model API's (a gateway API key
or a JWT); the caller's token stays here, never going upstream. A session is
bound to the key that opened it: another key's request for it is 404, as an
unknown session is.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from core.errors import GatewayError, NotFound, error_body
from core.plugin import Services
from sluicegate_mcp.caller import SCOPE_KEY
from sluicegate_mcp.options import Options

MCP_PATH = "/mcp"
_HOST = re.compile(r"[A-Za-z0-9.\[\]:-]{1,255}")
METADATA_PATH = "/.well-known/oauth-protected-resource"
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGI = Callable[[Any, Receive, Send], Awaitable[None]]


class McpHttp:
    """The plugin's ASGI app: protected-resource metadata, and ``/mcp`` behind authentication."""

    def __init__(self, transport: ASGI, services: Services, options: Options) -> None:
        self._transport = transport
        self._services = services
        self._options = options

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            return
        path: str = scope.get("path", "").split("?", 1)[0].rstrip("/")
        headers = _headers(scope)
        if path in (METADATA_PATH, METADATA_PATH + MCP_PATH):
            await _send(send, 200, msgspec.json.encode(self._metadata(scope, headers)), [(b"cache-control", b"max-age=3600")])
            return
        if path != MCP_PATH:
            method = scope.get("method", "GET")
            await _send(send, 404, error_body(NotFound(f"Unknown request URL: {method} {path[:200]}.")))
            return
        authorization = headers.get("authorization")
        try:
            principal = await self._services.authenticate(authorization)
        except GatewayError as exc:
            extra = [(k.encode(), v.encode()) for k, v in exc.headers().items()]
            if exc.status == 401:
                challenge = f'Bearer resource_metadata="{self._base(scope, headers)}{METADATA_PATH}{MCP_PATH}"'
                if authorization:
                    challenge += ', error="invalid_token"'
                extra.append((b"www-authenticate", challenge.encode()))
            await _send(send, exc.status, error_body(exc), extra)
            return
        # The session owner: the key (never its token), so a session answers only the key that opened it.
        owner = AccessToken(token="", client_id=f"{principal.tenant}/{principal.key_id}", scopes=sorted(principal.scopes))
        await self._transport({**scope, SCOPE_KEY: principal, "user": AuthenticatedUser(owner)}, receive, send)

    def _metadata(self, scope: Any, headers: dict[str, str]) -> dict[str, Any]:
        document: dict[str, Any] = {
            "resource": f"{self._base(scope, headers)}{MCP_PATH}",
            "bearer_methods_supported": ["header"],
            "resource_name": "Sluicegate MCP gateway",
        }
        if self._options.authorization_servers:
            document["authorization_servers"] = list(self._options.authorization_servers)
        return document

    def _base(self, scope: Any, headers: dict[str, str]) -> str:
        if self._options.resource_url is not None:
            return self._options.resource_url.rstrip("/").removesuffix(MCP_PATH)
        host = headers.get("host", "")
        if not _HOST.fullmatch(host):
            host = "localhost"
        return f"{scope.get('scheme', 'http')}://{host}"


def _headers(scope: Any) -> dict[str, str]:
    return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in scope.get("headers", ())}


async def _send(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
