"""`sluicegate serve` with two workers: a console session opened on one is a session on both.

Each request goes on a new connection, so the workers take turns at random;
with sessions held by the process that opened them, most of these pages
would sign the browser out. The secret that signs the cookies is the one the
serving process made at start and handed to its workers (no
``auth.console_secret`` here).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import httpx

from router.auth import hash_api_key
from router.ui.session import COOKIE
from tests.e2e.conftest import serve

PAGES = 40
WRITES = 10


def test_two_workers_share_console_sessions(tmp_path: Path) -> None:
    key = "sk-console-workers-" + secrets.token_hex(12)
    settings = {
        "server": {"host": "127.0.0.1", "workers": 2, "log_level": "info"},
        "tenants": [{"id": "ops", "keys": [{"id": "ops-admin", "hash": hash_api_key(key), "scopes": ["ops:*"]}]}],
        "state": {"ledger_path": str(tmp_path / "ledger.sqlite"), "ledger_spool_path": str(tmp_path / "spool")},
    }
    gateway = serve(settings, tmp_path)
    try:
        fresh_connections = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=gateway.url, limits=fresh_connections, timeout=20.0) as http:
            signed_in = http.post("/ui/login", data={"key": key})
            assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui", signed_in.text
            for i in range(PAGES):
                page = http.get("/ui/tenants")
                assert page.status_code == 200, f"page {i}: {page.status_code} {page.headers.get('location')}"
                assert "<h1>Tenants</h1>" in page.text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
            # Writes carry the session's CSRF token, which every worker accepts: the API's own refusal (400) comes back.
            for i in range(WRITES):
                refused = http.post("/ui/tenants", data={"csrf": csrf, "id": "not a valid id"})
                assert refused.status_code == 400 and 'data-field="id"' in refused.text, f"write {i}: {refused.status_code}"
            out = http.post("/ui/logout", data={"csrf": csrf})
            assert out.status_code == 303 and out.headers["location"] == "/ui/login"
            assert COOKIE not in http.cookies
            assert http.get("/ui/tenants").headers.get("location") == "/ui/login"
        assert gateway.output().count("Started server process") >= 2
    finally:
        gateway.stop()
