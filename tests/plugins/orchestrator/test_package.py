"""The orchestrator distribution imports only what its brief allows, and ships its migrations."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import msgspec
import sluicegate_orchestrator
from sluicegate_orchestrator import ChildOutcome, Task
from sluicegate_orchestrator.migrate import SOURCE

from core.migrate import load_migrations

PACKAGE = Path(sluicegate_orchestrator.__file__).parent
ALLOWED = {"redis", "asyncpg", "msgspec", "core", "sluicegate_orchestrator"}
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


def test_migrations_load_under_their_own_namespace() -> None:
    migrations = load_migrations([SOURCE])
    assert [m.label for m in migrations] == ["orchestrator/1001", "orchestrator/1002"]
    assert (PACKAGE / "py.typed").is_file()


def test_tasks_and_child_outcomes_round_trip_through_msgspec() -> None:
    task = Task(
        id="task_" + "0" * 24, tenant="acme", kind="k", queue="default", input={"a": [1, {"b": None}]}, status="queued",
        attempts=0, max_attempts=3, trace_id="0" * 32, created_at=1.0, updated_at=1.0,
    )  # fmt: skip
    assert msgspec.json.decode(msgspec.json.encode(task), type=Task) == task
    outcomes = [ChildOutcome("task_1", "lint", "failed", None, "Permanent: x"), ChildOutcome("task_2", "ok", "succeeded", {"r": 1})]
    assert msgspec.convert(msgspec.to_builtins(outcomes), list[ChildOutcome]) == outcomes
