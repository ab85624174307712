"""Sign-in with the configured OIDC provider: ``/ui/oidc/start`` and the provider's callback.

The start page opens a pre-session (``router.ui.oidc_flow``) and sends the
browser to the provider's authorization endpoint with ``state``, ``nonce`` and
an S256 PKCE challenge. The callback ends the pre-session, exchanges the code
with the verifier (and the client secret, when configured), verifies the ID
token (``router.ui.oidc_client``) and opens a console session in the same
store, with the same CSRF token, as a key's sign-in. Its answer is a page that
moves on to ``/ui`` itself: the session cookie is ``SameSite=Strict``, and a
browser leaves it off a redirect chain that began at the provider.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from core.config import TenantConfig
from core.errors import GatewayError, PermissionDenied
from router.gateway import Gateway
from router.jwt_auth import TenantLookup
from router.routes_admin import caller_for
from router.tenant_records import TenantNotFound, TenantStore
from router.ui.console import is_tls, sessions
from router.ui.login_limit import client_address, login_limit, too_many
from router.ui.oidc_client import OidcClient, SignInFailed, provider_error
from router.ui.oidc_flow import PRE_COOKIE, FlowError, PendingSignIns, pre_cookie_header, s256_challenge
from router.ui.render import page, redirect
from router.ui.session import COOKIE, Identity, cookie_header

CALLBACK = "/ui/oidc/callback"
_CLIENT = "console_oidc_client"
_PENDING = "console_oidc_pending"
_REFUSALS = (400, 401, 403)


def oidc_client(request: Request[Any, Any, Any]) -> OidcClient | None:
    """The configured provider's client (one per app), or None when ``auth.oidc`` is not set."""
    client: OidcClient | None = request.app.state.get(_CLIENT)
    if client is None:
        gateway: Gateway = request.app.state.gateway
        auth = gateway.base.auth
        if auth.oidc is None:
            return None
        tenant_claim = auth.oidc.tenant_claim or (auth.jwt.tenant_claim if auth.jwt is not None else "tenant")
        client = OidcClient(auth.oidc, tenant_claim)
        request.app.state[_CLIENT] = client
    return client


def provider_name(request: Request[Any, Any, Any]) -> str | None:
    """What the sign-in button names; None hides it."""
    client = oidc_client(request)
    return client.name if client is not None else None


def _pending(request: Request[Any, Any, Any]) -> PendingSignIns:
    flows: PendingSignIns | None = request.app.state.get(_PENDING)
    if flows is None:
        store = sessions(request)
        flows = PendingSignIns(store.signer("oidc pre-session"), store.signed_out)
        request.app.state[_PENDING] = flows
    return flows


def _tenant_lookup(store: TenantStore) -> TenantLookup:
    """The tenant an ID token names, as the API's JWT check reads it; None when there is none."""

    async def lookup(tenant_id: str) -> TenantConfig | None:
        try:
            tenant = await store.get_tenant(tenant_id)
        except TenantNotFound:
            return None
        return TenantConfig(
            id=tenant.id, name=tenant.name, disabled=tenant.disabled, priority=tenant.priority,
            weight=tenant.weight, limits=tenant.limits, budgets=list(tenant.budgets),
        )  # fmt: skip

    return lookup


def _ended(request: Request[Any, Any, Any], response: Response[bytes]) -> Response[bytes]:
    """``response`` with the pre-session cookie removed: a callback ends it, whatever its outcome."""
    response.set_cookie(PRE_COOKIE, "", path="/", max_age=0, httponly=True, samesite="lax", secure=is_tls(request))
    return response


def _failed(request: Request[Any, Any, Any], status: int, message: str) -> Response[bytes]:
    return _ended(request, page("signin_error.html", status=status, me=None, message=message))


@get("/ui/oidc/start", include_in_schema=False)
async def start(request: Request[Any, Any, Any]) -> Response[bytes]:
    client = oidc_client(request)
    if client is None:
        return page("error.html", status=404, me=None, title="Not found", message="Sign-in with an identity provider is not configured.")
    try:
        endpoints = await client.endpoints()
    except SignInFailed as exc:
        return _failed(request, exc.status, exc.message)
    redirect_uri = str(request.base_url).rstrip("/") + client.config.redirect_path
    pre_cookie, pending = _pending(request).begin(redirect_uri)
    location = client.authorize_url(endpoints, redirect_uri=redirect_uri, state=pending.state, nonce=pending.nonce,
                                    challenge=s256_challenge(pending.verifier))  # fmt: skip
    return redirect(location, headers={"set-cookie": pre_cookie_header(pre_cookie, secure=is_tls(request))})


@get(CALLBACK, include_in_schema=False)
async def callback(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Finish the sign-in the pre-session cookie names; any failure is a 4xx page that echoes nothing it was sent.

    A refused callback (400, 401, 403) counts as a failed sign-in of the client's address (``router.ui.login_limit``).
    """
    client = oidc_client(request)
    if client is None:
        return page("error.html", status=404, me=None, title="Not found", message="Sign-in with an identity provider is not configured.")
    limit, address = login_limit(request), client_address(request)
    wait_s = limit.retry_after(address)
    if wait_s is not None:
        refused = _failed(request, 429, too_many(wait_s))
        refused.headers["retry-after"] = str(wait_s)
        return refused
    response = await _finish(request, client)
    status = response.status_code or 200
    if status in _REFUSALS:
        limit.failed(address)
    elif status < 400:
        limit.succeeded(address)
    return response


async def _finish(request: Request[Any, Any, Any], client: OidcClient) -> Response[bytes]:
    query = request.query_params
    try:
        pending = await _pending(request).finish(request.cookies.get(PRE_COOKIE), query.get("state"))
    except FlowError as exc:
        return _failed(request, 400, str(exc))
    except GatewayError as exc:
        return _failed(request, exc.status, exc.message)
    if query.get("error") is not None:
        reason = provider_error(query.get("error"))
        return _failed(request, 403, f"{client.name} did not sign you in ({reason}).")
    code = query.get("code")
    if not code:
        return _failed(request, 400, f"{client.name} sent no authorization code.")
    try:
        endpoints = await client.endpoints()
        id_token = await client.exchange(endpoints, code=code, verifier=pending.verifier, redirect_uri=pending.redirect_uri)
        gateway: Gateway = request.app.state.gateway
        principal = await client.principal(endpoints, id_token, nonce=pending.nonce, tenants=_tenant_lookup(gateway.tenants))
        caller_for(principal)
    except SignInFailed as exc:
        return _failed(request, exc.status, exc.message)
    except PermissionDenied:
        return _failed(request, 403, "Your account has no admin scope (ops:*, tenant:read or tenant:write).")
    store = sessions(request)
    try:
        await store.close(request.cookies.get(COOKIE))
    except GatewayError:
        pass  # the replaced session's id could not be recorded as signed out: the sign-in goes on
    cookie, _ = store.open(None, Identity(principal.tenant, principal.key_id, principal.scopes))
    return _ended(request, page("signed_in.html", me=None, headers={"set-cookie": cookie_header(cookie, secure=is_tls(request))}))


ROUTES = [start, callback]
