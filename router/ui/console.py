"""Who is signed in, and how a page or a write runs for them.

``show`` runs a page for the signed-in caller; ``write`` first checks the
request's origin and the session's CSRF token. The caller is the admin API's
``Caller`` for the key the session was opened with, read again from the tenant
store on every request, so each page and write gets the API's permission
checks for exactly that key. A session opened through the OIDC provider gets
the principal an API JWT with the same tenant and scopes would, its tenant
read again on every request. A refusal of the API becomes a page with its
status (another tenant's resource: 404, as the API answers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response
from litestar.datastructures import FormMultiDict

from core.errors import GatewayError, PermissionDenied
from core.principal import Principal
from router.gateway import Gateway
from router.routes_admin import Caller, caller_for
from router.tenant_records import TenantNotFound, TenantStore
from router.ui.render import error_page, page, redirect
from router.ui.session import (
    COOKIE,
    Identity,
    Session,
    SessionStore,
    clear_cookie_header,
    cookie_header,
    csrf_matches,
    lifetime,
    same_origin,
)
from router.ui.session_secret import SESSIONS_STATE, open_sessions

LOGIN = "/ui/login"


@dataclass(slots=True)
class Console:
    """One request of a signed-in caller."""

    gateway: Gateway
    caller: Caller
    session: Session
    request: Request[Any, Any, Any]
    form: FormMultiDict = field(default_factory=FormMultiDict)

    @property
    def store(self) -> TenantStore:
        return self.gateway.tenants

    @property
    def actor(self) -> str:
        return self.caller.actor

    def ctx(self, **extra: Any) -> dict[str, Any]:
        """What every template gets: who is signed in, the CSRF token, the navigation they may use."""
        p = self.caller.principal
        # The plugins' console panels (router.ui.pages_plugins) the caller may open.
        offered = self.gateway.snapshot.plugins.console_panels
        panels = [{"name": x.name, "title": x.title} for x in offered if self.caller.ops or not x.operators_only]
        return {"me": {"tenant": p.tenant, "key": p.key_id, "ops": self.caller.ops, "write": self.caller.may_write()},
                "csrf": self.session.csrf, "path": self.request.url.path, "panels": panels, **extra}  # fmt: skip

    def require_ops(self) -> None:
        self.caller.require_ops()


Handler = Callable[[Console], Awaitable[Response[bytes]]]


def sessions(request: Request[Any, Any, Any]) -> SessionStore:
    store: SessionStore | None = request.app.state.get(SESSIONS_STATE)
    if store is None:
        gateway: Gateway = request.app.state.gateway
        store = open_sessions(gateway.base)
        request.app.state[SESSIONS_STATE] = store
    return store


def is_tls(request: Request[Any, Any, Any]) -> bool:
    return request.url.scheme == "https"


async def _console(request: Request[Any, Any, Any]) -> Console | None:
    session = await sessions(request).find(request.cookies.get(COOKIE))
    if session is None:
        return None
    gateway: Gateway = request.app.state.gateway
    if session.identity is not None:
        principal = await identity_principal(gateway.tenants, session.identity)
    else:
        assert session.key_hash is not None
        principal = await gateway.tenants.authenticate(session.key_hash)
    if principal is None:
        # The key was revoked, expired or its tenant disabled (or removed): the session ends with it.
        await sessions(request).close(session)
        return None
    return Console(gateway, caller_for(principal), session, request)


async def identity_principal(store: TenantStore, identity: Identity) -> Principal | None:
    """The principal of an OIDC session, built as for an API JWT; None once its tenant is gone or disabled."""
    try:
        tenant = await store.get_tenant(identity.tenant)
    except TenantNotFound:
        return None
    if tenant.disabled:
        return None
    return Principal(
        tenant=tenant.id, key_id=identity.key_id, scopes=identity.scopes, priority=tenant.priority,
        weight=tenant.weight, tenant_limits=tenant.limits, tenant_budgets=tuple(tenant.budgets),
    )  # fmt: skip


def _signed_out(request: Request[Any, Any, Any]) -> Response[bytes]:
    return redirect(LOGIN, headers={"set-cookie": clear_cookie_header(secure=is_tls(request))})


def _kept(console: Console, response: Response[bytes]) -> Response[bytes]:
    """``response`` with the session's cookie re-issued, seen now (the idle timeout rolls), unless it sets the cookie itself."""
    if "set-cookie" not in response.headers:
        cookie = sessions(console.request).renewed(console.session)
        response.headers["set-cookie"] = cookie_header(cookie, secure=is_tls(console.request), max_age=lifetime(console.session))
    return response


async def _signed_in(request: Request[Any, Any, Any]) -> Console | Response[bytes]:
    """The caller's console, or the page to answer instead: sign-in, or the tenant store's refusal."""
    try:
        console = await _console(request)
    except PermissionDenied:
        return _signed_out(request)
    except GatewayError as exc:
        return page("error.html", status=exc.status, title="Unavailable", message=exc.message, me=None)
    return console if console is not None else _signed_out(request)


async def show(request: Request[Any, Any, Any], handler: Handler) -> Response[bytes]:
    """Run ``handler`` for the signed-in caller; the sign-in page for anyone else."""
    console = await _signed_in(request)
    if isinstance(console, Response):
        return console
    try:
        return _kept(console, await handler(console))
    except GatewayError as exc:
        return _kept(console, error_page(console.ctx(), exc))


async def write(request: Request[Any, Any, Any], handler: Handler) -> Response[bytes]:
    """``show`` for a form post: refused (403) unless same-origin and carrying the session's CSRF token."""
    if not same_origin(request):
        return page("error.html", status=403, title="Refused", message="This form was posted from another site.", me=None)
    console = await _signed_in(request)
    if isinstance(console, Response):
        return console
    form = await request.form()
    token = form.get("csrf")
    if not csrf_matches(console.session, token if isinstance(token, str) else None):
        return error_page(console.ctx(), PermissionDenied("The form's security token is missing or stale: reload the page and try again."))
    console.form = form
    try:
        return _kept(console, await handler(console))
    except GatewayError as exc:
        return _kept(console, error_page(console.ctx(), exc))
