"""HTML responses of the console: templates, security headers and error pages.

Every page goes out with a strict Content Security Policy (no inline script or
style: the one stylesheet and the one script are files under /ui/static),
``X-Frame-Options: DENY`` and ``Cache-Control: no-store``, so a page that
showed a key once is not kept by the browser.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Response

from core.errors import GatewayError
from router.ui.charts import usd

HERE = Path(__file__).parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
HTML = "text/html; charset=utf-8"

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["money"] = usd
_env.filters["utc"] = lambda epoch_s: datetime.fromtimestamp(float(epoch_s), UTC).strftime("%Y-%m-%d %H:%M:%S")


def page(template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> Response[bytes]:
    """``template`` rendered with ``context`` (autoescaped), with the console's security headers."""
    body = _env.get_template(template).render(**context).encode()
    return Response(body, status_code=status, media_type=HTML, headers={**SECURITY_HEADERS, **(headers or {})})


def redirect(location: str, headers: dict[str, str] | None = None) -> Response[bytes]:
    """303 See Other: after a write, the browser fetches ``location`` with GET."""
    return Response(b"", status_code=303, headers={**SECURITY_HEADERS, "location": location, **(headers or {})})


def error_page(ctx: dict[str, Any], exc: GatewayError) -> Response[bytes]:
    """The API's refusal as a page: its status and message, nothing more."""
    return page("error.html", status=exc.status, **ctx, title=_TITLES.get(exc.status, "Error"), message=exc.message)


def not_found(ctx: dict[str, Any]) -> Response[bytes]:
    return page("error.html", status=404, **ctx, title="Not found", message="There is no such page, or it is not yours to see.")


_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Invalid", 503: "Unavailable"}
