"""The package's boundary: what it may import, and what its distribution declares.

The clients use the standard library, aiohttp, msgspec and ``core`` only; the
plugin module (the workflows the orchestrator runs) also uses the orchestrator.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import sluicegate_adapters

PACKAGE = Path(sluicegate_adapters.__file__).parent
ALLOWED = {"aiohttp", "msgspec", "core", "sluicegate_adapters"}
# The workflows' module: task handlers get the orchestrator's StepContext.
PLUGIN_ALLOWED = ALLOWED | {"sluicegate_orchestrator"}


def test_imports_only_the_standard_library_aiohttp_msgspec_and_core() -> None:
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                allowed = PLUGIN_ALLOWED if path.name == "plugin.py" else ALLOWED
                if top not in allowed and top not in sys.stdlib_module_names:
                    found[name] = f"{path.name}:{node.lineno}"
    assert found == {}


def test_distribution_metadata() -> None:
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert (project["name"], project["version"], project["requires-python"]) == ("sluicegate-adapters", "0.1.0", ">=3.11")
    assert project["dependencies"] == ["sluicegate", "sluicegate-orchestrator", "aiohttp>=3.10,<4", "msgspec>=0.19"]
    assert project["entry-points"]["sluicegate.plugins"] == {"adapters": "sluicegate_adapters.plugin:AdaptersPlugin"}
    assert (PACKAGE / "py.typed").is_file()
