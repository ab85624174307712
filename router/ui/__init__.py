"""The admin console at /ui: server-rendered pages on the admin API's own operations.

Operators (``ops:*``) see every tenant and the gateway's config, models and
canaries; tenant admins (``tenant:read``/``tenant:write``) see their own tenant
only, as the admin API lets them. Sessions, CSRF and the page headers are in
``router.ui.session`` and ``router.ui.render``; sign-in with an OIDC provider
(``auth.oidc``) in ``router.ui.routes_oidc``. Pages the enabled plugins offer
(``Plugin.console_panels()``) are in ``router.ui.pages_plugins``.
"""

from __future__ import annotations

from router.ui import pages_config, pages_ops, pages_plugins, pages_tenants, pages_usage, routes_auth, routes_oidc

ROUTES = [
    *routes_auth.ROUTES, *routes_oidc.ROUTES, *pages_usage.ROUTES, *pages_tenants.ROUTES, *pages_ops.ROUTES, *pages_config.ROUTES,
    *pages_plugins.ROUTES,
]  # fmt: skip
