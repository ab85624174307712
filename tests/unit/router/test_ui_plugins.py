"""Console panels from plugins: which a plugin set offers, how the console contains a panel's failure, how one renders.

The pages themselves (sign-in, CSRF, a tenant admin's 404s) run end to end in
tests/browser/test_console_plugins.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from core.config import PluginConfig
from core.console_panel import PanelAction, PanelFilter, PanelRow, PanelSection, PanelView, PanelViewer
from core.errors import InvalidRequest, NotFound
from core.plugin import Plugin
from router.plugins import NO_PLUGINS, Loaded, PluginFailed, PluginSet
from router.ui import pages_plugins
from router.ui.render import page


class Panel:
    def __init__(self, name: str, title: str = "Demo", operators_only: bool = False) -> None:
        self.name = name
        self.title = title
        self.operators_only = operators_only

    async def view(self, viewer: PanelViewer, params: Mapping[str, str]) -> PanelView:
        return PanelView(sections=[])

    async def act(self, viewer: PanelViewer, action: str, target: str) -> str:
        return "done"


class First(Plugin):
    def console_panels(self) -> list[Any]:
        return [Panel("tasks", "Tasks"), Panel("Bad Name!"), Panel("ops-only", operators_only=True)]


class Second(Plugin):
    def console_panels(self) -> list[Any]:
        return [Panel("tasks", "Other tasks"), Panel("mcp", "MCP servers")]


def _set(*classes: type[Plugin]) -> PluginSet:
    services: Any = SimpleNamespace()
    loaded = [Loaded(PluginConfig(name=cls.__name__.lower()), cls, cls.Options()) for cls in classes]
    return PluginSet(tuple((entry, entry.cls(entry.options, services)) for entry in loaded))


def test_a_set_offers_its_plugins_panels_in_config_order_the_first_name_winning() -> None:
    assert NO_PLUGINS.console_panels == () and _set(Plugin).console_panels == ()
    plugins = _set(First, Second)
    assert [(p.name, p.title) for p in plugins.console_panels] == [("tasks", "Tasks"), ("ops-only", "Demo"), ("mcp", "MCP servers")]
    found = plugins.panel("mcp")
    assert found is not None and found.title == "MCP servers"
    assert plugins.panel("Bad Name!") is None and plugins.panel("nope") is None


async def test_a_panels_refusal_passes_and_its_failure_is_the_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    panel = Panel("demo")

    async def refuses() -> str:
        raise NotFound("There is no task 'x'.")

    async def breaks() -> str:
        raise RuntimeError("a detail that must not show")

    async def hangs() -> str:
        await asyncio.sleep(10)
        return "late"

    with pytest.raises(NotFound):
        await pages_plugins.contained(panel, refuses())
    with pytest.raises(PluginFailed) as failed:
        await pages_plugins.contained(panel, breaks())
    assert failed.value.status == 503 and "detail" not in failed.value.message and "RuntimeError" in failed.value.message
    monkeypatch.setattr(pages_plugins, "PANEL_TIMEOUT_S", 0.05)
    with pytest.raises(PluginFailed, match="in time"):
        await pages_plugins.contained(panel, hangs())


def test_query_parameters_are_bounded() -> None:
    assert pages_plugins._params([("status", "dead"), ("status", "queued")]) == {"status": "dead"}
    for pairs in ([("k", "v")] * 21, [("status", "x" * 300)], [("k" * 100, "v")]):
        with pytest.raises(InvalidRequest):
            pages_plugins._params(pairs)


def test_a_panel_renders_escaped_with_its_actions_as_csrf_forms_and_nothing_inline() -> None:
    view = PanelView(
        sections=[
            PanelSection(
                id="dead", title="Dead letters", columns=["Task", "Note"],
                rows=[PanelRow(id="task_1", cells=["task_1", "<script>alert(1)</script>"],
                               actions=[PanelAction(label="Replay", action="replay", target="task_1")])],
                actions=[PanelAction(label="Replay all", action="replay_all", confirm=True)],
            ),
            PanelSection(title="Tasks", columns=["Task"], rows=[], empty="No tasks match."),
        ],
        filters=[PanelFilter(name="status", label="Status", value="dead", choices=["", "dead", "queued"])],
        more={"after": "task_1", "status": "dead"},
    )  # fmt: skip
    me = {"tenant": "ops", "key": "k", "ops": True, "write": True}
    panels = [{"name": "tasks", "title": "Tasks"}]
    ctx = {"me": me, "csrf": "tok-123", "path": "/ui/plugins/tasks", "panels": panels, "panel": Panel("tasks", "Tasks"),
           "view": view, "query": "status=dead", "message": "Replayed task task_1.", "error": None}  # fmt: skip
    response = page("plugin.html", **ctx)
    html = response.content.decode()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert re.search(r"<script(?![^>]*\bsrc=)", html) is None and "style=" not in html
    assert html.count('name="csrf" value="tok-123"') == 3  # two actions and the sign-out form
    assert 'data-confirm="Replay all?"' in html and 'name="return" value="status=dead"' in html
    assert '<a href="/ui/plugins/tasks" aria-current="page">Tasks</a>' in html
    assert 'id="panel-message"' in html and "No tasks match." in html and 'href="/ui/plugins/tasks?after=task_1&amp;status=dead"' in html
    assert '<option value="dead" selected>' in html
    assert "unsafe-inline" not in response.headers["content-security-policy"]
