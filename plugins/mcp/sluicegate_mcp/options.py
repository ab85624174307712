"""The mcp plugin's options: the upstream servers, their credentials by reference, and the limits on every call.

Decoded strictly (an unknown key is refused, naming it). Credentials are only
ever references (``{env: NAME}`` or ``{file: PATH}``), resolved when the
plugin starts (``resolve_headers``, ``resolve_env``): one that does not
resolve refuses the start, naming the key, never the value.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from core.config import ConfigError, SecretRef
from sluicegate_mcp.names import SERVER_NAME

ServerName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=SERVER_NAME)]
HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
Bytes = Annotated[int, msgspec.Meta(ge=1024, le=256 * 1024 * 1024)]


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Admission for one tenant on one server (per replica); None: unlimited."""

    # Tool calls a minute.
    rpm: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # Tool calls in flight at once.
    max_concurrent: Annotated[int, msgspec.Meta(ge=1)] | None = None


class ServerSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One upstream MCP server: Streamable HTTP at ``url``, or a child process speaking stdio (``command``)."""

    name: ServerName
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2048)] | None = None
    command: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] | None = None
    args: tuple[str, ...] = ()
    cwd: str | None = None
    # HTTP headers every request to the server carries (an API key, ``Authorization: Bearer ...``), by reference.
    headers: dict[HeaderName, SecretRef] = msgspec.field(default_factory=dict)
    # Per tenant: headers that replace ``headers`` of the same name for that tenant's calls.
    tenant_headers: dict[str, dict[HeaderName, SecretRef]] = msgspec.field(default_factory=dict)
    # Environment of a stdio server (over the gateway's own PATH, HOME, ...), by reference.
    env: dict[str, SecretRef] = msgspec.field(default_factory=dict)
    # Per tenant: environment that replaces ``env`` of the same name (the tenant gets a process of its own).
    tenant_env: dict[str, dict[str, SecretRef]] = msgspec.field(default_factory=dict)
    # How to connect: "auto" (the current revision where the server speaks it, else the initialize handshake) or
    # "legacy" (the handshake always: a session whose list-changed notifications the gateway relays to its clients).
    protocol: Literal["auto", "legacy"] = "auto"
    # Overrides of the plugin-wide settings for this server.
    timeout_s: Seconds | None = None
    max_result_bytes: Bytes | None = None
    limits: Limits | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.command is None):
            raise ValueError(f"server {self.name!r} needs exactly one of `url` or `command`")
        if self.command is None and (self.env or self.tenant_env or self.args):
            raise ValueError(f"server {self.name!r}: `args`, `env` and `tenant_env` are for stdio servers (`command`)")
        if self.url is None and (self.headers or self.tenant_headers):
            raise ValueError(f"server {self.name!r}: `headers` and `tenant_headers` are for HTTP servers (`url`)")


class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    servers: tuple[ServerSpec, ...] = ()
    # The longest a tool call (or a list, a read, a prompt) may take upstream; then it fails with a timeout.
    timeout_s: Seconds = 30.0
    # How long connecting to an upstream server (a process start included) may take.
    connect_timeout_s: Seconds = 10.0
    # The largest tool result (or resource, prompt) passed on, in bytes of its JSON; larger: an error.
    max_result_bytes: Bytes = 1024 * 1024
    # The largest request body /mcp reads; larger: 413.
    max_body_bytes: Bytes = 4 * 1024 * 1024
    # How long an upstream server's tool, prompt and resource lists are reused (a list-changed notification ends it).
    catalog_ttl_s: Seconds = 60.0
    # Every tenant's admission on every server, unless the server sets its own.
    limits: Limits = msgspec.field(default_factory=Limits)
    # Tenants whose tool-call arguments (after their PII policy) go into the audit entry; by default none do.
    record_arguments: tuple[str, ...] = ()
    # The public URL of /mcp (the OAuth protected resource); None: from the request's Host.
    resource_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] | None = None
    # Authorization servers named in the protected-resource metadata (where clients get tokens).
    authorization_servers: tuple[str, ...] = ()
    # Idle streamable-HTTP sessions are closed after this long.
    session_idle_timeout_s: Seconds = 1800.0

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for spec in self.servers:
            if spec.name in seen:
                raise ValueError(f"server name {spec.name!r} is used twice")
            seen.add(spec.name)


def _resolve(refs: dict[str, SecretRef], where: str) -> dict[str, str]:
    out = {}
    for name, ref in refs.items():
        try:
            out[name] = ref.resolve()
        except ConfigError as exc:
            raise ConfigError(f"plugin mcp: key `{where}.{name}`: {exc}") from None
    return out


def resolve_headers(spec: ServerSpec, index: int, tenant: str | None) -> dict[str, str]:
    """The headers the gateway sends ``spec`` (for ``tenant``'s calls when it has headers of its own)."""
    headers = _resolve(spec.headers, f"options.servers[{index}].headers")
    if tenant is not None and tenant in spec.tenant_headers:
        headers.update(_resolve(spec.tenant_headers[tenant], f"options.servers[{index}].tenant_headers.{tenant}"))
    return headers


def resolve_env(spec: ServerSpec, index: int, tenant: str | None) -> dict[str, str]:
    """The environment a stdio server gets (for ``tenant``'s process when it has an environment of its own)."""
    env = _resolve(spec.env, f"options.servers[{index}].env")
    if tenant is not None and tenant in spec.tenant_env:
        env.update(_resolve(spec.tenant_env[tenant], f"options.servers[{index}].tenant_env.{tenant}"))
    return env


def has_tenant_credentials(spec: ServerSpec, tenant: str) -> bool:
    return tenant in spec.tenant_headers or tenant in spec.tenant_env
