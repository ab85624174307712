"""Pages the enabled plugins add to the console (``core.console_panel``): ``/ui/plugins/{panel}``.

A panel comes from the plugin set of the config version this replica serves
(``PluginSet.panel``); the console never imports a plugin. GET renders the
panel's tables and filters for the signed-in caller; POST
``/ui/plugins/{panel}/act`` (same-origin, with the session's CSRF token, as
every console write) runs one of its actions and redirects back to the page,
which shows the action's message (carried in the query, sealed with the
session's CSRF token, so no other session or site can put words there). A panel that is for operators only
is "not found" for a tenant admin, as is one no plugin offers. The panel
filters rows by the viewer's tenant itself; a refusal it raises is shown on
the page with its status. A panel that fails or does not answer within
``PANEL_TIMEOUT_S`` is the plugin's failure (503 ``plugin_failed``), never a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

from litestar import Request, Response, get, post

from core.console_panel import ConsolePanel, PanelView, PanelViewer
from core.errors import GatewayError, InvalidRequest, NotFound, PermissionDenied
from router.plugins import PluginFailed
from router.ui.console import Console, show, write
from router.ui.render import page, redirect

T = TypeVar("T")
PANEL_TIMEOUT_S = 15.0
MAX_PARAMS = 20
MAX_PARAM_CHARS = 256
# The query parameters that carry an action's message back to the page: never the panel's.
DONE, SEAL = "done", "seal"
log = logging.getLogger("sluicegate.console")


def viewer_of(console: Console) -> PanelViewer:
    """The caller as a panel sees it: an operator (no tenant) or a tenant admin, and whether it may write."""
    caller = console.caller
    return PanelViewer(tenant=None if caller.ops else caller.principal.tenant, write=caller.may_write(), actor=caller.actor)


def panel_of(console: Console, name: str) -> ConsolePanel:
    panel = console.gateway.snapshot.plugins.panel(name)
    if panel is None or (panel.operators_only and not console.caller.ops):
        raise NotFound("There is no such page, or it is not yours to see.")
    return panel


async def contained(panel: ConsolePanel, call: Awaitable[T]) -> T:
    """A panel's call within the deadline; its own failure is the plugin's (503), never the console's 500."""
    try:
        async with asyncio.timeout(PANEL_TIMEOUT_S):
            return await call
    except GatewayError:
        raise
    except TimeoutError:
        log.warning("console panel %s did not answer within %gs", panel.name, PANEL_TIMEOUT_S)
        raise PluginFailed(f"The {panel.title} page did not answer in time; try again shortly.", retry_after=1) from None
    except Exception as exc:  # a plugin's bug must not become the console's
        log.warning("console panel %s failed (%s)", panel.name, type(exc).__name__)
        raise PluginFailed(f"The {panel.title} page failed ({type(exc).__name__}).", retry_after=1) from None


def _params(pairs: list[tuple[str, str]], limit: int = MAX_PARAMS) -> dict[str, str]:
    """Query parameters, the first value of each; bounded, as any input."""
    if len(pairs) > limit or any(len(k) > 64 or len(v) > MAX_PARAM_CHARS for k, v in pairs):
        raise InvalidRequest("The page's query is too long.")
    out: dict[str, str] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def _seal(console: Console, panel: str, message: str) -> str:
    # The session's CSRF token is its own secret: only this session's pages show the message.
    return hmac.new(console.session.csrf.encode(), f"{panel}\n{message}".encode(), hashlib.sha256).hexdigest()[:32]


def _done(console: Console, panel: str, params: dict[str, str]) -> str | None:
    """The action's message the query carries, when sealed for this session and panel (taken out of ``params``)."""
    message, seal = params.pop(DONE, None), params.pop(SEAL, None)
    if message is None or seal is None or not hmac.compare_digest(seal, _seal(console, panel, message)):
        return None
    return message


async def _render(
    console: Console, panel: ConsolePanel, params: dict[str, str], *, message: str | None = None, error: str | None = None,
    status: int = 200,
) -> Response[bytes]:  # fmt: skip
    view: PanelView = await contained(panel, panel.view(viewer_of(console), params))
    ctx = console.ctx(panel=panel, view=view, query=urlencode(params), message=message, error=error)
    return page("plugin.html", status=status, **ctx)


@get("/ui/plugins/{name:str}", include_in_schema=False)
async def panel_page(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    async def render(console: Console) -> Response[bytes]:
        panel = panel_of(console, name)
        params = _params([(k, v) for k, v in request.query_params.multi_items() if isinstance(v, str)])
        message = _done(console, panel.name, params)
        return await _render(console, panel, params, message=message)

    return await show(request, render)


@post("/ui/plugins/{name:str}/act", status_code=200, include_in_schema=False)
async def panel_act(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    async def run(console: Console) -> Response[bytes]:
        panel = panel_of(console, name)
        viewer = viewer_of(console)
        if not viewer.write:
            raise PermissionDenied("This key may only read: it needs the `tenant:write` or `ops:write` scope.")
        action, target, back = (console.form.get(field) for field in ("action", "target", "return"))
        if not isinstance(action, str) or not action or len(action) > 64:
            raise InvalidRequest("The form names no action.", param="action")
        target = target if isinstance(target, str) else ""
        if len(target) > MAX_PARAM_CHARS:
            raise InvalidRequest("The action's target is too long.", param="target")
        # The page's own query, to go back to: room is left for the message and its seal.
        back = back if isinstance(back, str) and len(back) <= 4 * MAX_PARAM_CHARS else ""
        params = _params(parse_qsl(back, keep_blank_values=False), MAX_PARAMS - 2)
        params.pop(DONE, None)
        params.pop(SEAL, None)
        try:
            message = await contained(panel, panel.act(viewer, action, target))
        except GatewayError as exc:
            if exc.status >= 500:
                raise
            return await _render(console, panel, params, error=exc.message, status=exc.status)
        message = message[:MAX_PARAM_CHARS]
        query = urlencode({**params, DONE: message, SEAL: _seal(console, panel.name, message)})
        return redirect(f"/ui/plugins/{panel.name}?{query}")

    return await write(request, run)


ROUTES = [panel_page, panel_act]
