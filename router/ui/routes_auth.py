"""Sign-in with an admin key (the page also offers the OIDC provider when configured), sign-out, the two static files.

Failed sign-ins are limited per client address and overall (``router.ui.login_limit``): past the limit
the sign-in page answers 429 with ``Retry-After`` and says how long to wait.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response, get, post

from core.errors import GatewayError, PermissionDenied
from router.auth import hash_api_key
from router.gateway import Gateway
from router.routes_admin import caller_for
from router.ui.console import LOGIN, Console, is_tls, sessions, write
from router.ui.login_limit import client_address, login_limit, too_many
from router.ui.render import HERE, SECURITY_HEADERS, page, redirect
from router.ui.routes_oidc import provider_name
from router.ui.session import COOKIE, clear_cookie_header, cookie_header, same_origin

_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
STATIC = {p.name: (p.read_bytes(), _TYPES[p.suffix]) for p in (HERE / "static").iterdir() if p.suffix in _TYPES}
MAX_KEY_CHARS = 512
log = logging.getLogger("sluicegate.console")


@get(LOGIN, include_in_schema=False)
async def login_form(request: Request[Any, Any, Any]) -> Response[bytes]:
    return page("login.html", me=None, errors={}, oidc=provider_name(request))


@post(LOGIN, status_code=200, include_in_schema=False)
async def login(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Open a session for a key that may use the admin API; the key itself is kept nowhere.

    Failed sign-ins are limited per client address and overall (``router.ui.login_limit``).
    """
    if not same_origin(request):
        return page("login.html", status=403, me=None, errors={"key": "This form was posted from another site."})
    limit, address = login_limit(request), client_address(request)
    wait_s = limit.retry_after(address)
    if wait_s is not None:
        return page("login.html", status=429, headers={"retry-after": str(wait_s)}, me=None, errors={"key": too_many(wait_s)})
    form = await request.form()
    raw = form.get("key")
    key = raw.strip() if isinstance(raw, str) else ""
    if not key or len(key) > MAX_KEY_CHARS:
        return page("login.html", status=400, me=None, errors={"key": "Enter an admin API key (sk-...)."})
    gateway: Gateway = request.app.state.gateway
    key_hash = hash_api_key(key, gateway.pepper)
    try:
        principal = await gateway.tenants.authenticate(key_hash)
    except GatewayError as exc:
        return page("login.html", status=exc.status, me=None, errors={"key": exc.message})
    if principal is None:
        limit.failed(address)
        return page("login.html", status=401, me=None, errors={"key": "Incorrect, revoked or expired key."})
    try:
        caller_for(principal)
    except PermissionDenied:
        limit.failed(address)
        return page("login.html", status=403, me=None, errors={"key": "This key has no admin scope (ops:*, tenant:read or tenant:write)."})
    limit.succeeded(address)
    store = sessions(request)
    await _end_previous(request)
    cookie, _ = store.open(key_hash)
    return redirect("/ui", headers={"set-cookie": cookie_header(cookie, secure=is_tls(request))})


async def _end_previous(request: Request[Any, Any, Any]) -> None:
    """A sign-in over a live session ends that one; that it cannot be recorded does not stop the sign-in."""
    try:
        await sessions(request).close(request.cookies.get(COOKIE))
    except GatewayError as exc:
        log.warning("console: a replaced session could not be marked signed out (%s)", exc.code)


@post("/ui/logout", status_code=200, include_in_schema=False)
async def logout(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def close(console: Console) -> Response[bytes]:
        # The browser's cookie goes in any case; the id is kept as signed out for every process that shares the set.
        try:
            await sessions(request).close(console.session)
        except GatewayError as exc:
            log.warning("console: a signed-out session could not be recorded as such (%s)", exc.code)
        return redirect(LOGIN, headers={"set-cookie": clear_cookie_header(secure=is_tls(request))})

    return await write(request, close)


@get("/ui/static/{name:str}", sync_to_thread=False, include_in_schema=False)
def static(name: str) -> Response[bytes]:
    found = STATIC.get(name)
    if found is None:
        return Response(b"not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)
    body, media_type = found
    return Response(body, media_type=media_type, headers={**SECURITY_HEADERS, "cache-control": "public, max-age=3600"})


ROUTES = [login_form, login, logout, static]
