"""Console panels: pages a plugin adds to the admin console (``Plugin.console_panels()``).

A panel is read as tables: ``view`` answers a ``PanelView`` (sections of
tables whose cells are strings, optional filters, per-row and per-table
actions) and ``act`` runs one of the actions it offered. The console renders
every panel with one template at ``/ui/plugins/<name>``, applies its session,
CSRF and security headers, and never imports the plugin.

The panel enforces tenancy itself: ``viewer.tenant`` is the signed-in tenant
admin's tenant (``None`` for an operator, who sees every tenant), and a panel
shows and acts on that tenant's rows only, as its own API would. Input it
refuses is a ``core.errors.GatewayError`` with a 4xx status (another tenant's
row: ``NotFound``, as for a row that does not exist); the console shows it on
the page with that status. A cell never holds a secret, a prompt or an
upstream's error text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

import msgspec

# A panel's name is its URL slug under /ui/plugins/.
PANEL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class PanelViewer(msgspec.Struct, frozen=True, kw_only=True):
    """Who looks at a panel: an operator (``tenant`` None) or a tenant admin of ``tenant``."""

    tenant: str | None
    # Whether the viewer may run actions (``ops:write``/``ops:*`` or ``tenant:write``).
    write: bool
    # Who acts, for the audit log ("tenant/key").
    actor: str = ""

    @property
    def operator(self) -> bool:
        return self.tenant is None

    def sees(self, tenant: str) -> bool:
        """Whether a row of ``tenant`` is the viewer's to see."""
        return self.tenant is None or self.tenant == tenant


class PanelAction(msgspec.Struct, frozen=True, kw_only=True):
    """A button: posts ``action`` on ``target`` to the panel's ``act``; ``confirm`` asks the viewer first."""

    label: str
    action: str
    target: str = ""
    confirm: bool = False


class PanelRow(msgspec.Struct, frozen=True, kw_only=True):
    cells: list[str]
    actions: list[PanelAction] = msgspec.field(default_factory=list)
    # A stable id for the row (a task id), rendered as ``data-id`` for scripts and tests.
    id: str = ""


class PanelSection(msgspec.Struct, frozen=True, kw_only=True):
    """One table: a title, its column headings, its rows, and actions on the whole table."""

    title: str
    columns: list[str]
    rows: list[PanelRow]
    actions: list[PanelAction] = msgspec.field(default_factory=list)
    # Shown in place of the table when it has no rows.
    empty: str = "Nothing to show."
    note: str | None = None
    # The table's HTML id (a slug); empty: from its position.
    id: str = ""


class PanelFilter(msgspec.Struct, frozen=True, kw_only=True):
    """A query parameter the panel reads: free text, or one of ``choices`` ("" always means no filter)."""

    name: str
    label: str
    value: str = ""
    choices: list[str] | None = None


class PanelView(msgspec.Struct, frozen=True, kw_only=True):
    sections: list[PanelSection]
    filters: list[PanelFilter] = msgspec.field(default_factory=list)
    # The query of the next page, when there is one (``{"after": "<cursor>", ...}``).
    more: dict[str, str] | None = None


class ConsolePanel(Protocol):
    """A page of the console a plugin offers; ``name`` is its URL slug (``PANEL_NAME``)."""

    @property
    def name(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def operators_only(self) -> bool:
        """True: tenant admins neither see the panel nor reach it."""
        ...

    async def view(self, viewer: PanelViewer, params: Mapping[str, str]) -> PanelView:
        """The viewer's tables; ``params`` are the page's query parameters (filters, the cursor)."""
        ...

    async def act(self, viewer: PanelViewer, action: str, target: str) -> str:
        """Run an action the view offered; the message to show. Refused input: a 4xx ``GatewayError``."""
        ...
