"""Sign-in with an admin key (the page also offers the OIDC provider when configured), sign-out, the two static files."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post

from core.errors import GatewayError, PermissionDenied
from router.auth import hash_api_key
from router.gateway import Gateway
from router.routes_admin import caller_for
from router.ui.console import LOGIN, Console, is_tls, sessions, write
from router.ui.render import HERE, SECURITY_HEADERS, page, redirect
from router.ui.routes_oidc import provider_name
from router.ui.session import COOKIE, clear_cookie_header, cookie_header, same_origin

_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
STATIC = {p.name: (p.read_bytes(), _TYPES[p.suffix]) for p in (HERE / "static").iterdir() if p.suffix in _TYPES}
MAX_KEY_CHARS = 512


@get(LOGIN, include_in_schema=False)
async def login_form(request: Request[Any, Any, Any]) -> Response[bytes]:
    return page("login.html", me=None, errors={}, oidc=provider_name(request))


@post(LOGIN, status_code=200, include_in_schema=False)
async def login(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Open a session for a key that may use the admin API; the key itself is kept nowhere."""
    if not same_origin(request):
        return page("login.html", status=403, me=None, errors={"key": "This form was posted from another site."})
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
        return page("login.html", status=401, me=None, errors={"key": "Incorrect, revoked or expired key."})
    try:
        caller_for(principal)
    except PermissionDenied:
        return page("login.html", status=403, me=None, errors={"key": "This key has no admin scope (ops:*, tenant:read or tenant:write)."})
    store = sessions(request)
    store.close(request.cookies.get(COOKIE))
    sid, _ = store.open(key_hash)
    return redirect("/ui", headers={"set-cookie": cookie_header(sid, secure=is_tls(request))})


@post("/ui/logout", status_code=200, include_in_schema=False)
async def logout(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def close(console: Console) -> Response[bytes]:
        sessions(request).close(request.cookies.get(COOKIE))
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
