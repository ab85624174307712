"""The mcp distribution: imports only its dependencies and core, is found through its entry point, ships py.typed."""

from __future__ import annotations

import ast
import sys
from importlib.metadata import entry_points
from pathlib import Path

import sluicegate_mcp
from sluicegate_mcp.plugin import McpPlugin

from core.plugin import ENTRY_POINT_GROUP, Plugin

PACKAGE = Path(sluicegate_mcp.__file__).parent
ALLOWED = {"mcp", "mcp_types", "httpx2", "pydantic", "msgspec", "prometheus_client", "opentelemetry", "core", "sluicegate_mcp"}
FORBIDDEN = {"router", "serving", "policies", "budgets"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_package_imports_only_its_dependencies_and_core() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        imported = _imports(path)
        outside = {name for name in imported if name not in ALLOWED and name not in sys.stdlib_module_names}
        assert outside == set(), f"{path.name} imports {sorted(outside)}"
        assert not imported & FORBIDDEN


def test_the_entry_point_names_the_plugin() -> None:
    [found] = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "mcp"]
    cls = found.load()
    assert cls is McpPlugin and issubclass(cls, Plugin) and cls.api_version == 1
    assert cls.http_prefix == ("/mcp", "/.well-known/oauth-protected-resource")
    assert (PACKAGE / "py.typed").is_file()
