"""The MCP gateway's page in the admin console (``core.console_panel``): servers, their tools, and who is granted what.

Read-only: grants are edited in the tenants' config (``mcp_tools``). Each
server is asked for its tool list (the catalog's cached list, within
``PROBE_S``), which says whether it is up; a server that fails shows the
type of its failure, never its words (they may quote a URL's credentials).
An operator sees every server, and the grants of the tenants the plugin knows
of (those with credentials of their own on a server) or names in the filter:
the gateway offers plugins no list of its tenants. A tenant admin sees only
the servers their tenant is granted anything on, only the tools it may call,
and only its own grants (the tenant's, and each key's narrowing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from mcp.shared.exceptions import MCPError

from core.config import TenantConfig
from core.console_panel import PanelFilter, PanelRow, PanelSection, PanelView, PanelViewer
from core.errors import InvalidRequest, Overloaded
from core.plugin import Services
from sluicegate_mcp.grants import Access, GrantSet
from sluicegate_mcp.hub import Hub
from sluicegate_mcp.options import ServerSpec
from sluicegate_mcp.upstream import failure_type

# How long the page waits for one server's tool list (the servers are asked at once).
PROBE_S = 5.0
DESCRIPTION_MAX = 160
_HINTS = (("readOnlyHint", "read-only"), ("destructiveHint", "destructive"), ("openWorldHint", "open world"))


class _Probe:
    """One server's answer: its tools, or why there are none."""

    def __init__(self, tools: list[Any] | None, error: str | None) -> None:
        self.tools = tools
        self.error = error


def _transport(spec: ServerSpec, operator: bool) -> str:
    if spec.command is not None:
        return "stdio"
    if not operator or spec.url is None:
        return "http"
    # Scheme and host only: a path or query may carry a credential.
    scheme, _, rest = spec.url.partition("://")
    return f"http ({scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]})"


def _limits(hub: Hub, spec: ServerSpec) -> str:
    limits = spec.limits if spec.limits is not None else hub.options.limits
    parts = []
    if limits.rpm is not None:
        parts.append(f"{limits.rpm}/min")
    if limits.max_concurrent is not None:
        parts.append(f"{limits.max_concurrent} at once")
    return ", ".join(parts) or "none"


def _hints(tool: Any) -> str:
    annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations is not None else {}
    return ", ".join(label for key, label in _HINTS if annotations.get(key) is True)


def _description(tool: Any) -> str:
    text = " ".join(str(tool.description or "").split())
    return text if len(text) <= DESCRIPTION_MAX else text[: DESCRIPTION_MAX - 1] + "…"


class ServersPanel:
    """``/ui/plugins/mcp``: one mcp plugin's upstream servers, tools and grants."""

    name = "mcp"
    title = "MCP servers"
    operators_only = False

    def __init__(self, hub: Callable[[], Hub | None], services: Services) -> None:
        self._hub = hub
        self._services = services

    async def view(self, viewer: PanelViewer, params: Mapping[str, str]) -> PanelView:
        hub = self._hub()
        if hub is None:
            raise Overloaded("The MCP gateway is not started; try again shortly.", retry_after=1)
        if viewer.tenant is None:
            asked = params.get("tenant", "").strip()
            if len(asked) > 128:
                raise InvalidRequest("A tenant id is at most 128 characters.", param="tenant")
            known = {t for s in hub.servers.values() for t in (*s.spec.tenant_headers, *s.spec.tenant_env)}
            tenants = sorted(known | ({asked} if asked else set()))
            grants: GrantSet | None = None
            servers = sorted(hub.servers)
            filters = [PanelFilter(name="tenant", label="Tenant", value=asked)]
        else:
            tenants = [viewer.tenant]
            config = self._services.tenant_config(viewer.tenant)
            grants = GrantSet.parse(config.mcp_tools if config is not None else [])
            servers = sorted(s for s in hub.servers if s in grants.servers())
            filters = []
        probes = await asyncio.gather(*(self._probe(hub, server, viewer.tenant) for server in servers))
        found = dict(zip(servers, probes))
        return PanelView(
            sections=[_servers(hub, found, grants, viewer.operator), _tools(found, grants), self._grants(hub, tenants, viewer.operator)],
            filters=filters,
        )

    async def act(self, viewer: PanelViewer, action: str, target: str) -> str:
        raise InvalidRequest("The MCP servers page is read-only: grants are edited in the tenants' config (`mcp_tools`).", param="action")

    async def _probe(self, hub: Hub, server: str, tenant: str | None) -> _Probe:
        try:
            async with asyncio.timeout(min(PROBE_S, hub.timeout_s(server))):
                return _Probe(list(await hub.listing(server, tenant, "tools")), None)
        except TimeoutError:
            return _Probe(None, "timeout")
        except MCPError as exc:
            return _Probe(None, f"error {exc.code}")
        except Exception as exc:  # noqa: BLE001 - a server that cannot list is shown down, with the type of its failure
            return _Probe(None, hub.upstream(server, tenant).last_error or failure_type(exc))

    def _grants(self, hub: Hub, tenants: list[str], operator: bool) -> PanelSection:
        rows = []
        for tenant in tenants:
            config = self._services.tenant_config(tenant)
            if config is None:
                rows.append(PanelRow(id=tenant, cells=[tenant, "", "(no such tenant in the config)", ""]))
                continue
            rows.extend(_grant_rows(hub, config))
        note = None
        if operator:
            note = "Tenants with credentials of their own on a server are listed; name another in the filter to see its grants."
        return PanelSection(
            id="grants", title="Grants (mcp_tools)", columns=["Tenant", "Key", "Grants", "Servers reached"], rows=rows,
            empty="No grants to show.", note=note,
        )  # fmt: skip


def _grant_rows(hub: Hub, config: TenantConfig) -> list[PanelRow]:
    def reached(access: Access) -> str:
        names = [s if s in hub.servers else f"{s} (not configured)" for s in sorted(access.servers())]
        return ", ".join(names) or "none"

    tenant_grants = [str(g) for g in config.mcp_tools]
    tenant_set = GrantSet.parse(tenant_grants)
    rows = [PanelRow(id=config.id, cells=[config.id, "(every key)", ", ".join(tenant_grants) or "none", reached(Access(tenant_set))])]
    for key in config.keys:
        if key.mcp_tools is not None:
            own = [str(g) for g in key.mcp_tools]
            # A key reaches what both its tenant's and its own grants allow.
            access = Access(tenant_set, GrantSet.parse(own))
            rows.append(PanelRow(id=f"{config.id}/{key.id}", cells=[config.id, key.id, ", ".join(own) or "none", reached(access)]))
    return rows


def _servers(hub: Hub, found: dict[str, _Probe], grants: GrantSet | None, operator: bool) -> PanelSection:
    rows = []
    for name, probe in found.items():
        spec = hub.servers[name].spec
        if probe.tools is None:
            status, count = f"down: {probe.error}", ""
        else:
            status = "up"
            count = str(sum(1 for t in probe.tools if grants is None or grants.allows_tool(name, t.name)))
        rows.append(PanelRow(id=name, cells=[name, _transport(spec, operator), status, count, _limits(hub, spec)]))
    title = "Upstream servers" if grants is None else "Upstream servers your tenant is granted"
    return PanelSection(
        id="servers", title=title, columns=["Server", "Transport", "Status", "Tools", "Limits per tenant"], rows=rows,
        empty="No upstream server" + (" is configured." if grants is None else " is granted to your tenant."),
    )  # fmt: skip


def _tools(found: dict[str, _Probe], grants: GrantSet | None) -> PanelSection:
    rows = []
    for server, probe in found.items():
        for tool in probe.tools or []:
            if grants is None or grants.allows_tool(server, tool.name):
                rows.append(PanelRow(id=f"{server}/{tool.name}", cells=[server, tool.name, _hints(tool), _description(tool)]))
    title = "Tools" if grants is None else "Tools your tenant may call"
    return PanelSection(id="tools", title=title, columns=["Server", "Tool", "Hints", "Description"], rows=rows, empty="No tools listed.")
