"""A tenant's guardrails and MCP tool grants in the console: shown, edited as a new config version, refused next to the field.

The fields live in the live config only, so the form writes through the admin
API's ``replace_config``, conditional on the version it showed (a stale edit
is a conflict); a tenant the admin API created is not in the config file and
gets none (as its PII policy). The real app runs under uvicorn in this event loop.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgspec
import pytest
from markupsafe import escape

from core.config import Config
from router.auth import hash_api_key
from router.gateway import Gateway
from router.tenant_records import TenantCreate
from router.ui.forms import FieldError
from router.ui.live_policy import parse_grants, parse_guardrails
from tests.integration.gateway_server import running_gateway

OPS_KEY = "sk-console-guardrails-ops-0123456789"
ADMIN_KEY = "sk-console-guardrails-admin-0123456789"
GUARDRAILS = """- kind: deny_patterns
  name: no-ssn
  patterns: ['\\d{3}-\\d{2}-\\d{4}']
- kind: secrets
  name: secrets-out
  mode: stream
  action: warn
"""


def _config(workdir: Path) -> Config:
    settings = {
        "server": {"log_level": "warning", "access_log": False},
        "tenants": [
            {"id": "ops", "keys": [{"id": "ops-admin", "hash": hash_api_key(OPS_KEY), "scopes": ["ops:*"]}]},
            {
                "id": "globex", "name": "Globex", "mcp_tools": ["docs/*"],
                "guardrails": [{"kind": "tool_allowlist", "name": "tools", "allow": ["search"]}],
                "keys": [{"id": "globex-admin", "hash": hash_api_key(ADMIN_KEY), "scopes": ["tenant:read", "tenant:write"]}],
            },
        ],
        "state": {"ledger_path": str(workdir / "ledger.sqlite"), "ledger_spool_path": str(workdir / "spool")},
    }  # fmt: skip
    return msgspec.convert(settings, Config)


@dataclass
class Signed:
    base: str
    gateway: Gateway
    http: aiohttp.ClientSession

    async def page(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.base + path) as r:
            return r.status, await r.text()

    async def post(self, path: str, data: dict[str, str]) -> tuple[int, str, str | None]:
        async with self.http.post(self.base + path, data=data, allow_redirects=False) as r:
            return r.status, await r.text(), r.headers.get("location")


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Signed]:
    async with running_gateway(_config(tmp_path)) as (base, gateway):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(base + "/ui/login", data={"key": OPS_KEY}, allow_redirects=False) as r:
                assert r.status == 303
            yield Signed(base, gateway, http)


def _form(page: str) -> dict[str, str]:
    """The guardrails form's hidden fields: the CSRF token and the version it shows."""
    form = page[page.index('id="edit-guardrails"') :]
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    version = re.search(r'name="version" value="(\d+)"', form).group(1)  # type: ignore[union-attr]
    return {"csrf": csrf, "version": version}


def _tenant(gateway: Gateway, tenant_id: str) -> msgspec.Struct:
    return next(t for t in gateway.snapshot.config.tenants if t.id == tenant_id)


async def test_an_operator_sees_and_changes_the_guardrails_and_grants_as_a_new_version(console: Signed) -> None:
    status, page = await console.page("/ui/tenants/globex")
    assert status == 200 and 'id="edit-guardrails"' in page
    assert "kind: tool_allowlist" in page and "docs/*" in page and "null" not in page[page.index('id="g-list"') :]
    before = console.gateway.snapshot.version
    fields = {**_form(page), "guardrails": GUARDRAILS, "mcp_tools": "docs/*\nfiles/read_file, files/read_file"}
    status, _, location = await console.post("/ui/tenants/globex/guardrails", fields)
    assert status == 303 and location == "/ui/tenants/globex#guardrails"
    assert console.gateway.snapshot.version == before + 1
    tenant = _tenant(console.gateway, "globex")
    assert [g.name for g in tenant.guardrails] == ["no-ssn", "secrets-out"]  # type: ignore[attr-defined]
    assert tenant.mcp_tools == ["docs/*", "files/read_file"]  # type: ignore[attr-defined]
    # The rest of the entry is as it was; the history names the change.
    assert tenant.name == "Globex" and [k.id for k in tenant.keys] == ["globex-admin"]  # type: ignore[attr-defined]
    latest = await console.gateway.reloader.store.get(console.gateway.snapshot.version)
    assert latest.reason == "tenant globex: guardrails and MCP tools changed in the console" and latest.actor == "ops/ops-admin"
    _, page = await console.page("/ui/tenants/globex")
    assert "no-ssn" in page and "files/read_file" in page
    # Emptied: none.
    status, _, _ = await console.post("/ui/tenants/globex/guardrails", {**_form(page), "guardrails": "", "mcp_tools": ""})
    assert status == 303
    tenant = _tenant(console.gateway, "globex")
    assert tenant.guardrails == [] and tenant.mcp_tools == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("guardrails", "grants", "field", "says"),
    [
        ("- kind: [unclosed", "", "guardrails", "Not valid YAML"),
        ("kind: secrets", "", "guardrails", "YAML list"),
        ("- kind: teleport\n  name: x", "", "guardrails", "Invalid guardrails"),
        ("- kind: tool_allowlist\n  name: t\n  mode: stream\n  allow: [a]", "", "guardrails", "not supported by kind"),
        ("- kind: deny_patterns\n  name: a\n  patterns: ['(a+)+']", "", "guardrails", "exponential"),
        ("- &a {kind: secrets, name: s}\n- *a", "", "guardrails", "aliases"),
        ("- {kind: secrets, name: s}\n- {kind: secrets, name: s}", "", "guardrails", "twice"),
        ("- {kind: moderation, name: m, deployment: nowhere}", "", "guardrails", "nowhere"),
        ("", "docs", "mcp_tools", "server/tool"),
        ("", "docs/*\nbad server/x", "mcp_tools", "'bad server/x'"),
    ],
)
async def test_refused_input_is_shown_next_to_its_field_and_nothing_is_written(
    console: Signed, guardrails: str, grants: str, field: str, says: str
) -> None:
    _, page = await console.page("/ui/tenants/globex")
    before = console.gateway.snapshot.version
    status, page, _ = await console.post("/ui/tenants/globex/guardrails", {**_form(page), "guardrails": guardrails, "mcp_tools": grants})
    assert status in (400, 422), page
    error = re.search(rf'<span class="field-error" role="alert" data-field="{field}">([^<]*)</span>', page)
    assert error is not None and str(escape(says)) in error.group(1), page[-3000:]
    assert console.gateway.snapshot.version == before
    # What was typed is still in the form.
    typed = guardrails if field == "guardrails" else grants
    assert str(escape(typed.split("\n")[0])) in page


async def test_a_stale_edit_shows_the_conflict(console: Signed) -> None:
    _, first = await console.page("/ui/tenants/globex")
    _, second = await console.page("/ui/tenants/globex")
    assert (await console.post("/ui/tenants/globex/guardrails", {**_form(first), "guardrails": "", "mcp_tools": "docs/*"}))[0] == 303
    status, page, _ = await console.post("/ui/tenants/globex/guardrails", {**_form(second), "guardrails": GUARDRAILS, "mcp_tools": ""})
    assert status == 409 and "Someone else changed the config" in page and "guardrails" in page
    assert _tenant(console.gateway, "globex").guardrails == []  # type: ignore[attr-defined]


async def test_a_tenant_the_admin_api_created_gets_none_in_the_file_store(console: Signed) -> None:
    await console.gateway.tenants.create_tenant(TenantCreate(id="newco"), "test")
    status, page = await console.page("/ui/tenants/newco")
    assert status == 200 and 'id="guardrails-not-in-config"' in page and 'id="edit-guardrails"' not in page
    _, globex = await console.page("/ui/tenants/globex")
    status, page, _ = await console.post("/ui/tenants/newco/guardrails", {**_form(globex), "guardrails": GUARDRAILS, "mcp_tools": ""})
    assert status == 400 and "add it there" in page
    assert all(t.id != "newco" for t in console.gateway.snapshot.config.tenants)


async def test_a_tenant_admin_neither_sees_nor_changes_them(console: Signed) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(console.base + "/ui/login", data={"key": ADMIN_KEY}, allow_redirects=False) as r:
            assert r.status == 303
        async with http.get(console.base + "/ui/tenants/globex") as r:
            page = await r.text()
            assert r.status == 200 and 'id="edit-guardrails"' not in page and "docs/*" not in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        data = {"csrf": csrf, "version": str(console.gateway.snapshot.version), "guardrails": "", "mcp_tools": ""}
        async with http.post(console.base + "/ui/tenants/globex/guardrails", data=data, allow_redirects=False) as r:
            assert r.status == 403
    assert _tenant(console.gateway, "globex").mcp_tools == ["docs/*"]  # type: ignore[attr-defined]


def test_the_parsers_keep_what_the_config_would_hold() -> None:
    assert parse_guardrails("") == [] and parse_guardrails("# nothing\n") == []
    assert parse_guardrails('[{"kind": "secrets", "name": "s"}]') == [{"kind": "secrets", "name": "s"}]  # JSON is YAML too
    assert parse_grants(" a/b ,c/*\n\n a/b ") == ["a/b", "c/*"]
    with pytest.raises(FieldError) as refused:
        parse_guardrails("x" * (64 * 1024 + 1))
    assert refused.value.field == "guardrails"
