"""A tenant's entry in the live config, as the console's forms change it: PII, privacy, guardrails, MCP tools.

These fields live only in the live config (the tenant stores hold tenants,
keys, limits and budgets), so each form writes a new config version through
the admin API's ``replace_config``, conditional on the version the form was
rendered from: an edit made stale by another writer shows the conflict
(``conflict``) instead of overwriting it. The guardrails are edited as the
YAML list the config file holds under ``tenants[].guardrails`` and the MCP
grants one a line (``server/tool`` or ``server/*``); both are checked here
first, so an error is shown next to its field, then again by the config's
own validation when the version is written.
"""

from __future__ import annotations

from typing import Any

import msgspec
import yaml
from litestar import Response

from core.config import McpGrant
from core.config_guardrails import GuardrailConfig, check_guardrails
from core.config_version import VersionConflict
from core.errors import InvalidRequest
from router.routes_config import current_version, version_diff
from router.tenant_records import Tenant
from router.ui.console import Console
from router.ui.forms import FieldError
from router.ui.render import page

MAX_GUARDRAILS_CHARS = 64 * 1024
MAX_GRANTS = 256


def version_number(raw: object, name: str) -> int:
    """A config version from a form field; 400 naming the field otherwise."""
    if not isinstance(raw, str) or not raw.isdigit() or not 1 <= int(raw) <= 2**62:
        raise InvalidRequest(f"`{name}` must be a config version number.", param=name)
    return int(raw)


async def conflict(console: Console, exc: VersionConflict, expected: int) -> Response[bytes]:
    """The stale write refused: what the other writer changed since ``expected``."""
    latest = console.gateway.snapshot.version
    changes = await version_diff(console.gateway, expected, latest)
    return page("conflict.html", status=409, **console.ctx(message=exc.message, diff=changes, expected=expected, latest=latest))


def tenant_entry(document: dict[str, Any], tenant_id: str) -> dict[str, Any] | None:
    return next((t for t in document.get("tenants", []) if t.get("id") == tenant_id), None)


def new_entry(console: Console, tenant: Tenant) -> dict[str, Any]:
    """The live-config entry of a tenant the PostgreSQL store holds: its policy only.

    The config file's store takes a tenant's name, limits and budgets from its
    entry when the file adds one, so a tenant created through the admin API
    gets its policy by being added to the config file.
    """
    if console.gateway.base.state.tenants != "postgres":
        raise InvalidRequest(
            f"Tenant {tenant.id!r} was created through the admin API and is not in the config file: add it there to give it a policy.",
            param="_form",
        )
    return {"id": tenant.id}


async def live_view(console: Console, tenant: Tenant) -> dict[str, Any]:
    """What the tenant page's guardrails and MCP form shows: the entry's values, as text, and the version they are from."""
    version = await current_version(console.gateway)
    entry = tenant_entry(msgspec.to_builtins(version.document), tenant.id)
    guardrails = (entry or {}).get("guardrails") or []
    grants = (entry or {}).get("mcp_tools") or []
    in_config = entry is not None or console.gateway.base.state.tenants == "postgres"
    # Unset options (null) left out: the list reads as one would write it in the file.
    shown = [{k: v for k, v in g.items() if v is not None} for g in guardrails]
    text = msgspec.yaml.encode(shown).decode() if shown else ""
    return {"version": version.version, "guardrails": text, "mcp_tools": "\n".join(grants), "in_config": in_config}


def _load_yaml(text: str) -> Any:
    """``text`` as YAML, refusing anchors and aliases: a few bytes of aliases can stand for an exponentially large list."""
    if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
        raise yaml.YAMLError("anchors and aliases (*name) are not accepted here")
    return yaml.safe_load(text)


def parse_guardrails(text: str) -> list[Any]:
    """The guardrails field: a YAML list of guardrails (empty: none), checked as the config checks it."""
    if len(text) > MAX_GUARDRAILS_CHARS:
        raise FieldError(f"At most {MAX_GUARDRAILS_CHARS} characters.", "guardrails")
    try:
        value = _load_yaml(text) if text.strip() else []
    except yaml.YAMLError as exc:
        raise FieldError(f"Not valid YAML: {str(exc).splitlines()[0]}.", "guardrails") from None
    if value is None:
        value = []
    if not isinstance(value, list):
        raise FieldError("A YAML list of guardrails, each with a `kind` and a `name` (or nothing for none).", "guardrails")
    try:
        check_guardrails(msgspec.convert(value, list[GuardrailConfig]))
    except (msgspec.ValidationError, ValueError) as exc:
        raise FieldError(f"Invalid guardrails: {exc}.", "guardrails") from None
    return value


def parse_grants(text: str) -> list[str]:
    """The MCP tools field: grants one a line (or comma-separated), ``server/tool`` or ``server/*``."""
    grants = list(dict.fromkeys(g.strip() for line in text.splitlines() for g in line.split(",") if g.strip()))
    if len(grants) > MAX_GRANTS:
        raise FieldError(f"At most {MAX_GRANTS} grants.", "mcp_tools")
    try:
        msgspec.convert(grants, list[McpGrant])
    except msgspec.ValidationError as exc:
        index = str(exc).rpartition("$[")[2].partition("]")[0]
        bad = grants[int(index)] if index.isdigit() else ""
        raise FieldError(f"{bad[:80]!r} is not a grant: use server/tool or server/* (letters, digits, _ and -).", "mcp_tools") from None
    return grants


def field_of(message: str) -> str:
    """The form field a refusal of the whole config names, when it names one of this form's."""
    for name in ("mcp_tools", "guardrails"):
        if f".{name}" in message:
            return name
    return "live"
