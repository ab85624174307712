"""The console's OIDC sign-in (``auth.oidc``): which provider, which client, which claims.

The console signs people in with the provider's authorization code flow and
PKCE; the ID token is verified as an API JWT is (``auth.jwt``), with the client
id as its audience. The client secret, when there is one, is only a reference.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from core.config_base import SecretRef, Strict

DEFAULT_REDIRECT_PATH = "/ui/oidc/callback"


class ConsoleOidcConfig(Strict):
    # The provider's issuer: discovery is read from {issuer}/.well-known/openid-configuration.
    issuer: Annotated[str, msgspec.Meta(min_length=1)]
    client_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    # Confidential clients only; a public client proves itself with PKCE alone.
    client_secret: SecretRef | None = None
    # Shown on the sign-in button ("Sign in with <name>"); None: the issuer's host.
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    # Where the provider sends the browser back, on this gateway's host (served at /ui/oidc/callback).
    redirect_path: Annotated[str, msgspec.Meta(pattern=r"^/[^?#\s]*$", max_length=512)] = DEFAULT_REDIRECT_PATH
    scopes: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)] = "openid profile"
    # Claim naming the tenant; None: the `auth.jwt` block's `tenant_claim`, else "tenant".
    tenant_claim: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    algorithms: Annotated[list[Literal["RS256", "ES256"]], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["RS256", "ES256"]
    )
    leeway_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 30.0
    # Deadline of each call to the provider (discovery, keys, token exchange).
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0

    def __post_init__(self) -> None:
        if not self.issuer.startswith(("https://", "http://")):
            raise ValueError("`issuer` must be an https:// or http:// URL")
        if "openid" not in self.scopes.split():
            raise ValueError("`scopes` must include `openid`")
