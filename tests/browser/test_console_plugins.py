"""The plugins' console pages in headless Chromium: the orchestrator's tasks (a dead task replayed) and the MCP servers.

A gateway process runs with the ``orchestrator`` plugin (tasks in a SQLite file,
its queue on the test Redis, workers only in ``sluicegate worker``, so a
replayed task stays queued for the page to show) and the ``mcp`` plugin (one
stdio server, tests/fakes/mcp_stdio.py). This test process writes the tasks
through the same store and Redis prefix: a task of ``globex`` goes dead on its
one attempt, one of ``initech`` waits queued. Screenshots go with the other
console tests' (see conftest).
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from sluicegate_orchestrator import Json, Orchestrator, RetryPolicy, SqliteTaskStore, StepContext, Task, Worker

from router.auth import hash_api_key
from tests.browser.pages import SignIn, shot, signed_in_pages
from tests.e2e.conftest import REPO, Process, serve

REDIS_URL = "redis://127.0.0.1:6379/0"
SECRET = "a-prompt-the-console-must-never-show"


@dataclass
class Gateway:
    url: str
    keys: dict[str, str]  # ops, globex, initech
    store: str
    prefix: str
    process: Process


def _settings(keys: dict[str, str], workdir: Path, store: str, prefix: str) -> dict[str, Any]:
    def tenant(tid: str, scopes: list[str], **extra: Any) -> dict[str, Any]:
        key = {"id": f"{tid}-admin", "hash": hash_api_key(keys[tid]), "scopes": scopes}
        return {"id": tid, "name": tid.title(), "keys": [key], **extra}

    local = {"name": "local", "command": sys.executable, "args": ["-m", "tests.fakes.mcp_stdio"], "cwd": str(REPO)}
    return {
        "server": {"host": "127.0.0.1", "log_level": "warning"},
        "tenants": [
            tenant("ops", ["ops:*"]),
            tenant("globex", ["tenant:read", "tenant:write"], mcp_tools=["local/pid"]),
            tenant("initech", ["tenant:read", "tenant:write"]),
        ],
        "state": {
            "redis_url": REDIS_URL, "files_path": str(workdir / "files"),
            "ledger_path": str(workdir / "ledger.sqlite"), "ledger_spool_path": str(workdir / "spool"),
        },
        "plugins": [
            {"name": "orchestrator", "options": {"store": store, "prefix": prefix, "run_in": ["worker"]}},
            {"name": "mcp", "options": {"servers": [local], "timeout_s": 20}},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    workdir = tmp_path_factory.mktemp("console-plugins")
    keys = {name: f"sk-console-{name}-{secrets.token_hex(12)}" for name in ("ops", "globex", "initech")}
    store, prefix = str(workdir / "tasks.sqlite"), f"test-console-{secrets.token_hex(5)}"
    process = serve(_settings(keys, workdir, store, prefix), workdir)
    try:
        yield Gateway(process.url, keys, store, prefix, process)
    finally:
        process.stop()
        for key in client.scan_iter(match=f"{prefix}*"):
            client.delete(key)
        client.close()


@pytest.fixture
async def tasks(gateway: Gateway) -> AsyncIterator[dict[str, Task]]:
    """Globex's task, dead after its one attempt; initech's, queued."""
    client = aioredis.from_url(REDIS_URL)
    store = SqliteTaskStore(gateway.store)
    orchestrator = Orchestrator(store, client, prefix=gateway.prefix)

    async def job(_ctx: StepContext) -> Json:
        raise RuntimeError(f"the upstream quoted {SECRET}")

    worker = Worker(orchestrator, {"job": job}, retry=RetryPolicy(base_s=0.01, cap_s=0.01), block_ms=50)
    worker.start()
    try:
        dead, _ = await orchestrator.create("globex", "job", {"prompt": SECRET}, max_attempts=1)
        deadline = time.monotonic() + 20
        while (current := await orchestrator.get("globex", dead.id)) is None or current.status != "dead":
            assert time.monotonic() < deadline, "the task did not go dead"
            await asyncio.sleep(0.05)
    finally:
        await worker.stop(grace_s=2)
    queued, _ = await orchestrator.create("initech", "later", {"prompt": SECRET})
    yield {"dead": dead, "queued": queued}
    await store.close()
    await client.aclose()


@pytest.fixture
async def open_page(browser: Any, gateway: Gateway) -> AsyncIterator[SignIn]:
    """``await open_page(key)``: a page in a fresh browser context, signed in with ``key``."""
    async with signed_in_pages(browser, gateway.url) as sign_in:
        yield sign_in


async def test_an_operator_replays_a_dead_task_and_a_tenant_admin_sees_only_their_own(
    open_page: SignIn, gateway: Gateway, tasks: dict[str, Task], artifacts: Path
) -> None:
    dead, queued = tasks["dead"], tasks["queued"]
    page = await open_page(gateway.keys["ops"])
    await page.click("header nav a:has-text('Tasks')")
    await page.wait_for_url("**/ui/plugins/tasks")
    row = page.locator(f"#dead tr[data-id='{dead.id}']")
    assert "RuntimeError" in await row.inner_text() and "dead" in await row.inner_text()
    assert await page.locator(f"#tasks tr[data-id='{queued.id}']").count() == 1, "an operator sees every tenant"
    assert SECRET not in await page.content()
    await shot(page, artifacts, "plugin-tasks-dead")
    await row.locator("button[data-action=replay]").click()
    await page.wait_for_url("**/ui/plugins/tasks?**")
    assert f"Replayed task {dead.id}." == (await page.locator("#panel-message").inner_text()).strip()
    assert await page.locator("#dead tr[data-id]").count() == 0
    assert "queued" in await page.locator(f"#tasks tr[data-id='{dead.id}']").inner_text()
    await shot(page, artifacts, "plugin-tasks-replayed")
    await page.reload()
    assert await page.locator("#panel-message").count() == 1, "the message belongs to the redirect's URL"
    await page.goto(gateway.url + "/ui/plugins/tasks")
    assert await page.locator("#panel-message").count() == 0

    admin = await open_page(gateway.keys["globex"])
    response = await admin.goto(gateway.url + "/ui/plugins/tasks")
    assert response.status == 200
    assert await admin.locator(f"#tasks tr[data-id='{dead.id}']").count() == 1
    content = await admin.content()
    assert queued.id not in content and "initech" not in content and SECRET not in content
    assert await admin.locator("#f-tenant").count() == 0, "no tenant filter for a tenant admin"
    await shot(admin, artifacts, "plugin-tasks-tenant")
    # Another tenant's task is as absent as a missing one: 404, shown on the page, and nothing changes.
    token = await admin.locator("header form.signout input[name=csrf]").get_attribute("value")
    refused = await admin.request.post(gateway.url + "/ui/plugins/tasks/act", form={"csrf": token, "action": "cancel", "target": queued.id})
    text = await refused.text()
    assert refused.status == 404 and "There is no task" in text and 'id="panel-error"' in text
    assert f'data-id="{queued.id}"' not in text and "initech" not in text, "the answer for a missing task, nothing of initech's"
    bad = await admin.request.post(gateway.url + "/ui/plugins/tasks/act", form={"csrf": token, "action": "explode", "target": ""})
    assert bad.status == 400
    bad_filter = await admin.goto(gateway.url + "/ui/plugins/tasks?status=bogus")
    assert bad_filter.status == 400 and "A task status is one of" in await admin.content()

    other = await open_page(gateway.keys["initech"])
    await other.goto(gateway.url + "/ui/plugins/tasks")
    assert await other.locator(f"#tasks tr[data-id='{queued.id}']").count() == 1 and dead.id not in await other.content()


async def test_the_mcp_page_shows_servers_tools_and_grants(open_page: SignIn, gateway: Gateway, artifacts: Path) -> None:
    page = await open_page(gateway.keys["ops"])
    await page.goto(gateway.url + "/ui/plugins/mcp?tenant=globex")
    servers = await page.locator("#servers tr[data-id=local]").inner_text()
    assert "stdio" in servers and "up" in servers and "3" in servers
    assert await page.locator("#tools tr[data-id]").count() == 3
    assert "local/pid" in await page.locator("#grants tr[data-id=globex]").inner_text()
    await shot(page, artifacts, "plugin-mcp")
    admin = await open_page(gateway.keys["globex"])
    await admin.goto(gateway.url + "/ui/plugins/mcp")
    assert [await r.get_attribute("data-id") for r in await admin.locator("#tools tr[data-id]").all()] == ["local/pid"]
    other = await open_page(gateway.keys["initech"])
    await other.goto(gateway.url + "/ui/plugins/mcp")
    assert await other.locator("#servers tr[data-id]").count() == 0 and "globex" not in await other.content()


async def test_a_post_without_the_csrf_token_or_to_an_unknown_page_is_refused(
    open_page: SignIn, gateway: Gateway, tasks: dict[str, Task]
) -> None:
    page = await open_page(gateway.keys["ops"])
    missing = await page.request.post(gateway.url + "/ui/plugins/tasks/act", form={"action": "replay_all"})
    assert missing.status == 403 and "security token" in await missing.text()
    wrong = await page.request.post(gateway.url + "/ui/plugins/tasks/act", form={"action": "replay_all", "csrf": "not-it"})
    assert wrong.status == 403
    await page.goto(gateway.url + "/ui/plugins/tasks")
    assert await page.locator(f"#dead tr[data-id='{tasks['dead'].id}']").count() == 1, "nothing was replayed"
    assert (await page.goto(gateway.url + "/ui/plugins/nope")).status == 404
