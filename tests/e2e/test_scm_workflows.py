"""The three plugins together: signed webhooks → orchestrator tasks → model calls through the gateway → SCM writes.

A gateway process (``sluicegate serve``) takes the webhooks and the task API
(the ``gateway`` plugin); ``sluicegate worker`` processes run the tasks (the
``orchestrator`` plugin) with the ``adapters`` plugin's workflows, writing to
a fake GitHub in this process that enforces its token and rate limits and
records every write. Redis and the task store are real and shared by
the processes, as in production: the task store is a PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from router.auth import hash_api_key
from serving.llamacpp import default_model_path
from tests.e2e.conftest import REPO, UPSTREAM_KEY, UPSTREAM_KEY_ENV, Process, gateway_config, serve
from tests.fakes.scm.github import FakeGitHub

REPOSITORY = "acme/api"
WEBHOOK_SECRET = "whsec-" + secrets.token_hex(12)
TASKS_KEY = "sk-e2e-tasks-" + secrets.token_hex(12)
SECRET_ENV = "SG_E2E_WEBHOOK_SECRET"
SCM_TOKEN_ENV = "SG_E2E_SCM_TOKEN"


ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


async def _database(sql: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


class ThreadScm:
    """The fake GitHub on an event loop in a background thread (the gateway's workers call it over loopback)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.github = FakeGitHub()
        self.base_url: str = self.run(self.github.start())

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn`` on the fake's loop (its state is touched by that loop only)."""

        async def go() -> Any:
            return fn()

        return self.run(go())

    def close(self) -> None:
        self.run(self.github.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class World:
    gateway: Process
    scm: ThreadScm
    config: Path
    workdir: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    deliveries: int = 0

    def start_worker(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", UPSTREAM_KEY_ENV: UPSTREAM_KEY}
        home = self.workdir / f"worker{len(self.workers)}"
        home.mkdir()
        with (home / "worker.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "router", "worker", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=home,
            )
        self.workers.append(proc)
        return proc

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def deliver(self, event: str, payload: dict[str, Any], delivery: str | None = None, secret: str = WEBHOOK_SECRET) -> httpx.Response:
        body = json.dumps(payload).encode()
        signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        self.deliveries += 1
        headers = {
            "content-type": "application/json", "x-github-event": event, "x-hub-signature-256": signature,
            "x-github-delivery": delivery or f"delivery-{self.deliveries}-{secrets.token_hex(4)}",
        }  # fmt: skip
        return httpx.post(self.gateway.url + "/webhooks/github", content=body, headers=headers, timeout=20)

    def task(self, task_id: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.gateway.url}/api/v1/tasks/{task_id}", headers={"authorization": f"Bearer {TASKS_KEY}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        task: dict[str, Any] = answer.json()
        return task

    def tasks(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.gateway.url}/api/v1/tasks?limit=100", headers={"authorization": f"Bearer {TASKS_KEY}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        data: list[dict[str, Any]] = answer.json()["data"]
        return data

    def wait_task(self, task_id: str, statuses: set[str], timeout_s: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        task = self.task(task_id)
        while time.monotonic() < deadline:
            task = self.task(task_id)
            if task["status"] in statuses:
                return task
            time.sleep(0.1)
        raise AssertionError(f"task {task_id} is {task['status']}, not {statuses}: {task}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join((w / "worker.log").read_text()[-3000:] for w in sorted(self.workdir.glob("worker*")))

    def writes(self, kind: str) -> list[Any]:
        return list(self.scm.call(lambda: self.scm.github.writes_of(kind)))


def _pull_payload(world: World, number: int, sha: str, action: str = "opened") -> dict[str, Any]:
    return {
        "action": action, "number": number,
        "pull_request": {
            "number": number, "title": "Add a retry budget", "body": "Adds a retry budget to the client.", "state": "open",
            "html_url": f"https://github.com/{REPOSITORY}/pull/{number}", "user": {"login": "octocat"}, "labels": [],
            "head": {"ref": f"feature-{number}", "sha": sha}, "base": {"ref": "main"}, "draft": False,
        },
        "repository": {"full_name": REPOSITORY, "name": "api"}, "sender": {"login": "octocat"},
    }  # fmt: skip


def _open_pull(world: World) -> tuple[int, str]:
    def make() -> tuple[int, str]:
        repo = world.scm.github.repos[REPOSITORY]
        pull = repo.open_pull_request(f"feature-{len(repo.pulls) + 1}", title="Add a retry budget")
        return pull.number, pull.head_sha

    result: tuple[int, str] = world.scm.call(make)
    return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[World]:
    scm = ThreadScm()
    scm.call(lambda: scm.github.add_repo(REPOSITORY))
    workdir = tmp_path_factory.mktemp("scm-workflows")
    prefix = f"sg:e2e:{secrets.token_hex(4)}:"
    # The task store every process shares: a throwaway PostgreSQL database (row-level security per tenant).
    database = f"sg_e2e_tasks_{secrets.token_hex(6)}"
    asyncio.run(_database(f"CREATE DATABASE {database}"))
    store = f"{ADMIN_DSN.rsplit('/', 1)[0]}/{database}"
    os.environ[SECRET_ENV] = WEBHOOK_SECRET
    os.environ[SCM_TOKEN_ENV] = scm.github.token
    upstream = fake_server.url + "/v1"
    settings = gateway_config(upstream)
    settings["deployments"].append(
        {"name": "review-slow", "provider": "openai", "base_url": upstream, "model": "fake-slow",
         "options": {"extra_headers": {"x-fake-delay-ms": "3000"}}}
    )  # fmt: skip
    settings["models"].append({"alias": "review-slow", "deployments": ["review-slow"]})
    # The embedded model (llama.cpp, SmolLM2) writes the tickets' plans and changes.
    settings["deployments"].append(
        {"name": "local-smollm2", "provider": "llamacpp", "model": "SmolLM2-135M-Instruct", "privacy": "self_hosted",
         "options": {"model_path": default_model_path(), "seed": 0}}
    )  # fmt: skip
    settings["models"].append({"alias": "local", "deployments": ["local-smollm2"]})
    settings["tenants"][0]["keys"].append({"id": "tasks-key", "hash": hash_api_key(TASKS_KEY), "scopes": ["tenant:read", "tenant:write"]})
    settings["state"] = {"redis_url": "redis://127.0.0.1:6379/0", "files_path": str(workdir / "files")}
    settings["plugins"] = [
        {"name": "gateway", "options": {
            "repositories": [{"provider": "github", "repository": REPOSITORY, "tenant": "e2e", "secret": {"env": SECRET_ENV}}],
            "store": store, "redis_prefix": prefix,
        }},
        {"name": "orchestrator", "options": {
            "store": store, "prefix": prefix, "run_in": ["worker"], "visibility_timeout_s": 3, "concurrency": 2,
            "backoff_base_s": 0.2, "backoff_max_s": 1.0, "stop_grace_s": 1,
        }},
        {"name": "adapters", "options": {
            "connections": [{"provider": "github", "base_url": scm.base_url, "token": {"env": SCM_TOKEN_ENV}}],
            "retry": {"max_attempts": 2, "base_delay_s": 0.1, "max_delay_s": 0.5, "max_wait_s": 5},
            "review": {"model": "review-slow"},
            "ticket": {"model": "local", "changes": 2, "max_tokens": 96},
        }},
    ]  # fmt: skip
    gateway = serve(settings, workdir)
    w = World(gateway, scm, workdir / "sluicegate.yaml", workdir)
    try:
        yield w
    finally:
        w.stop_workers()
        gateway.stop()
        scm.close()
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
        asyncio.run(_database(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))


def test_a_bad_signature_queues_nothing(world: World) -> None:
    number, sha = _open_pull(world)
    before = len(world.tasks())
    answer = world.deliver("pull_request", _pull_payload(world, number, sha), secret="not-the-secret")
    assert answer.status_code == 401
    assert len(world.tasks()) == before


def test_review_posts_one_comment_through_a_redelivery_and_a_killed_worker(world: World) -> None:
    number, sha = _open_pull(world)
    first = world.start_worker()
    delivery = f"pr-{number}-opened"
    answer = world.deliver("pull_request", _pull_payload(world, number, sha), delivery)
    assert answer.status_code == 202, answer.text
    task_id = answer.json()["task_id"]
    again = world.deliver("pull_request", _pull_payload(world, number, sha), delivery)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    # The worker claims it and is killed in the middle of the (3 s) model call.
    world.wait_task(task_id, {"running"}, 30)
    time.sleep(1.0)
    first.kill()
    first.wait(timeout=10)
    assert world.task(task_id)["status"] == "running"
    assert world.writes("comment.create") == []
    world.start_worker()
    done = world.wait_task(task_id, {"succeeded"}, 60)
    created = [w for w in world.writes("comment.create") if f"/issues/{number}/comments" in w.path]
    assert len(created) == 1, world.logs()
    pull = world.scm.call(lambda: world.scm.github.repos[REPOSITORY].pulls[number])
    assert len(pull.comments) == 1 and "Automated review" in pull.comments[0].body
    statuses = world.scm.call(lambda: [s for s in world.scm.github.repos[REPOSITORY].statuses if s.sha == sha])
    assert [(s.context, s.state) for s in statuses] == [("sluicegate/review", "success")]

    # The model call went through the pipeline as the tenant, joined to the task's trace.
    def billed() -> bool:
        return any(r["tenant"] == "e2e" and r["trace_id"] == done["trace_id"] and r["model"] == "review-slow" for r in _ledger_rows(world))

    deadline = time.monotonic() + 15  # the ledger writes in batches
    while not billed() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert billed(), _ledger_rows(world)

    # The pull request changes (a new commit): a new delivery updates the same comment.
    def push() -> str:
        repo = world.scm.github.repos[REPOSITORY]
        pull = repo.pulls[number]
        pull.head_sha = repo.commit(pull.head, {"more.txt": b"more\n"}, "more").sha
        return pull.head_sha

    new_sha: str = world.scm.call(push)
    update = world.deliver("pull_request", _pull_payload(world, number, new_sha, "synchronize"))
    assert update.status_code == 202
    world.wait_task(update.json()["task_id"], {"succeeded"}, 60)
    pull = world.scm.call(lambda: world.scm.github.repos[REPOSITORY].pulls[number])
    assert len(pull.comments) == 1
    assert len([w for w in world.writes("comment.create") if f"/issues/{number}/" in w.path]) == 1
    assert len([w for w in world.writes("comment.update") if "/issues/comments/" in w.path]) == 1
    assert new_sha[:12] in pull.comments[0].body


def _ledger_rows(world: World) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in world.workdir.glob("worker*/sluicegate-ledger.sqlite"):
        with sqlite3.connect(path) as db:
            for tenant, model, detail in db.execute("SELECT tenant, model, detail FROM ledger"):
                rows.append({"tenant": tenant, "model": model, "trace_id": json.loads(detail)[6]})  # detail: [..., trace_id, stream]
    return rows


def test_a_rate_limit_is_waited_out_as_the_scm_asked(world: World) -> None:
    if not any(w.poll() is None for w in world.workers):
        world.start_worker()
    number, sha = _open_pull(world)
    world.scm.call(lambda: world.scm.github.throttle(after=0, times=1, retry_after="2"))
    answer = world.deliver("pull_request", _pull_payload(world, number, sha))
    world.wait_task(answer.json()["task_id"], {"succeeded"}, 60)
    seen = world.scm.call(lambda: list(world.scm.github.requests))
    limited = [s for s in seen if s.status in (403, 429)]
    assert len(limited) == 1
    after = [s for s in seen if s.at > limited[0].at]
    assert after and after[0].at - limited[0].at >= 1.9  # the Retry-After it sent, not a shorter backoff


def test_a_task_that_keeps_failing_is_dead_lettered_and_a_replay_completes_it(world: World) -> None:
    if not any(w.poll() is None for w in world.workers):
        world.start_worker()
    number, sha = _open_pull(world)
    fragment = f"/issues/{number}/comments"
    world.scm.call(lambda: world.scm.github.fail_path(fragment, 502))
    answer = world.deliver("pull_request", _pull_payload(world, number, sha))
    task_id = answer.json()["task_id"]
    dead = world.wait_task(task_id, {"dead"}, 120)
    assert dead["attempts"] >= 2
    world.scm.call(lambda: world.scm.github.path_faults.clear())
    options = msgspec.yaml.decode(world.config.read_bytes())["plugins"][1]["options"]
    replay = subprocess.run(
        [sys.executable, "-m", "sluicegate_orchestrator.cli", "replay", "--store", options["store"], "--prefix", options["prefix"],
         task_id],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert replay.returncode == 0 and task_id in replay.stdout, replay.stderr
    world.wait_task(task_id, {"succeeded"}, 60)
    pull = world.scm.call(lambda: world.scm.github.repos[REPOSITORY].pulls[number])
    assert len(pull.comments) == 1


def _issue_payload(number: int, label: str = "sluicegate") -> dict[str, Any]:
    return {
        "action": "labeled",
        "issue": {"number": number, "title": "Timeouts are not retried", "body": "Retry timeouts once.", "state": "open",
                  "labels": [{"name": label}], "user": {"login": "octocat"}},
        "label": {"name": label}, "repository": {"full_name": REPOSITORY, "name": "api"}, "sender": {"login": "octocat"},
    }  # fmt: skip


def test_ticket_to_draft_pull_request_and_a_failing_child_stays_local(world: World) -> None:
    if not any(w.poll() is None for w in world.workers):
        world.start_worker()
    started = time.monotonic()
    answer = world.deliver("issues", _issue_payload(11))
    assert answer.status_code == 202, answer.text
    parent = world.wait_task(answer.json()["task_id"], {"succeeded"}, 240)
    took = time.monotonic() - started
    print(f"ticket to draft pull request on the embedded model: {took:.1f} s")
    assert parent["result"]["outcome"] == "opened"
    repo = world.scm.call(lambda: world.scm.github.repos[REPOSITORY])
    head = world.scm.call(lambda: repo.head("sluicegate/issue-11"))
    assert head is not None and {"docs/sluicegate/issue-11-1.md", "docs/sluicegate/issue-11-2.md"} <= set(head.files)
    pulls = world.scm.call(lambda: [p for p in repo.pulls.values() if p.head == "sluicegate/issue-11"])
    assert len(pulls) == 1 and pulls[0].draft and "#11" in pulls[0].body
    # What the model wrote is what was committed (three model calls: the plan and one per change).
    assert all(head.files[f"docs/sluicegate/issue-11-{i}.md"].strip() for i in (1, 2))
    # One child's commit keeps failing: it gives up, the branch is deleted, the parent records it and succeeds.
    world.scm.call(lambda: world.scm.github.fail_path("issue-12-2.md", 502))
    try:
        failing = world.deliver("issues", _issue_payload(12))
        parent = world.wait_task(failing.json()["task_id"], {"succeeded", "failed", "dead"}, 180)
    finally:
        world.scm.call(lambda: world.scm.github.path_faults.clear())
    assert parent["status"] == "succeeded" and parent["result"]["outcome"] == "compensated", parent
    assert len(parent["result"]["failed_children"]) == 1
    assert world.scm.call(lambda: repo.head("sluicegate/issue-12")) is None  # compensated: the branch is gone
    children = [t for t in world.tasks() if t.get("parent_id") == parent["id"]]
    assert sorted(t["status"] for t in children) == ["dead", "succeeded"], children
    assert not world.scm.call(lambda: [p for p in repo.pulls.values() if p.head == "sluicegate/issue-12"])
