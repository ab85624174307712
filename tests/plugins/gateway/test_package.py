"""The gateway distribution: imports only what its brief allows, is found through its entry point, ships py.typed."""

from __future__ import annotations

import ast
import sys
from importlib.metadata import entry_points
from pathlib import Path

import sluicegate_gateway
from sluicegate_gateway.plugin import GatewayPlugin

from core.plugin import ENTRY_POINT_GROUP, Plugin

PACKAGE = Path(sluicegate_gateway.__file__).parent
ALLOWED = {"msgspec", "redis", "litestar", "core", "sluicegate_orchestrator", "sluicegate_gateway"}
FORBIDDEN = {"router", "serving", "policies", "budgets"}


def _top_level_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_package_imports_only_the_stdlib_its_dependencies_and_core() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        imported = _top_level_imports(path)
        outside = {name for name in imported if name not in ALLOWED and name not in sys.stdlib_module_names}
        assert outside == set(), f"{path.name} imports {sorted(outside)}"
        assert not imported & FORBIDDEN


def test_the_entry_point_names_the_plugin() -> None:
    [found] = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "gateway"]
    cls = found.load()
    assert cls is GatewayPlugin and issubclass(cls, Plugin) and cls.api_version == 1
    assert cls.http_prefix == ("/webhooks", "/api/v1/tasks")
    assert (PACKAGE / "py.typed").is_file()
