"""Webhook deliveries through the plugin's ASGI app, on real Redis and a SQLite task store."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import redis.asyncio as aioredis
from sluicegate_gateway.dedup import DeliveryLog
from sluicegate_gateway.options import Options
from sluicegate_gateway.plugin import GatewayPlugin
from sluicegate_orchestrator import Orchestrator, TaskStoreUnavailable

from core.config import ConfigError
from tests.plugins.gateway import payloads
from tests.plugins.gateway.conftest import ADO_SECRET, GITHUB_SECRET, GITLAB_TOKEN, REDIS_URL, Call, FakeServices, call_app, repositories

READER = {"authorization": "Bearer sk-reader"}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _github(
    payload: dict[str, Any], *, event: str = "pull_request", secret: str = GITHUB_SECRET, delivery: str | None = None
) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    headers = {
        "x-github-event": event,
        "x-github-delivery": delivery or secrets.token_hex(8),
        "x-hub-signature-256": payloads.github_signature(secret, body),
        "content-type": "application/json",
        "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
    }
    return body, headers


async def _tasks(call: Call, key: dict[str, str] = READER) -> list[dict[str, Any]]:
    status, page = await call("GET", "/api/v1/tasks", headers=key, query="limit=100")
    assert status == 200, page
    return list(page["data"])


async def test_a_signed_pull_request_becomes_one_review_task(call: Call) -> None:
    body, headers = _github(payloads.github_pull_request())
    status, answer = await call("POST", "/webhooks/github", body, headers)
    assert status == 202 and answer["status"] == "queued" and answer["kind"] == "review", answer
    [task] = await _tasks(call)
    assert task["id"] == answer["task_id"] and task["kind"] == "review" and task["status"] == "queued"
    assert task["trace_id"] == TRACE  # from the delivery's traceparent
    item = task["input"]
    assert (item["provider"], item["repository"], item["number"], item["head_sha"]) == ("github", "acme/api", 42, payloads.HEAD_SHA)
    assert (item["delivery_id"], item["base_branch"], item["head_branch"]) == (headers["x-github-delivery"], "main", "retry-budget")
    assert task["idempotency_key"] == f"webhook:github:{headers['x-github-delivery']}"
    # The same delivery again (a provider's retry): acknowledged, not queued twice.
    status, again = await call("POST", "/webhooks/github", body, headers)
    assert (status, again["status"]) == (200, "duplicate")
    assert "task_id" not in again  # caught by the delivery log, before the store was asked
    assert len(await _tasks(call)) == 1


async def test_a_redelivery_after_the_ttl_still_finds_its_task(call: Call, plugin: GatewayPlugin, redis_prefix: str) -> None:
    body, headers = _github(payloads.github_pull_request())
    assert (await call("POST", "/webhooks/github", body, headers))[0] == 202
    client = aioredis.from_url(REDIS_URL)
    log = DeliveryLog(client, redis_prefix, 60)
    assert await client.delete(log.key("github", headers["x-github-delivery"])) == 1  # as if the TTL had passed
    await client.aclose()
    status, answer = await call("POST", "/webhooks/github", body, headers)
    assert (status, answer["status"]) == (200, "duplicate") and "task_id" in answer
    assert len(await _tasks(call)) == 1


@pytest.mark.parametrize("how", ["wrong secret", "missing", "tampered body", "other tenant's repository", "unknown repository"])
async def test_an_unproven_delivery_is_401_and_queues_nothing(call: Call, how: str) -> None:
    payload = payloads.github_pull_request()
    body, headers = _github(payload, secret="not-the-secret" if how == "wrong secret" else GITHUB_SECRET)
    if how == "missing":
        del headers["x-hub-signature-256"]
    elif how == "tampered body":
        body = body.replace(b"Add retry budget", b"Add retry budgie")
    elif how in ("other tenant's repository", "unknown repository"):
        # Signed with acme's secret, claiming a repository acme's secret does not cover.
        body, headers = _github(payloads.github_pull_request(repo="globex/site" if how.startswith("other") else "acme/nonesuch"))
    status, answer = await call("POST", "/webhooks/github", body, headers)
    assert status == 401, answer
    # One answer for all of them: a caller learns nothing about which check failed.
    assert answer["error"]["message"] == "The delivery's signature is missing or invalid, or its repository is not registered here."
    assert await _tasks(call) == [] and await _tasks(call, {"authorization": "Bearer sk-other"}) == []


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (json.dumps({"action": "opened", "repository": {"full_name": "acme/api"}, "pull_request": {"number": 1}}).encode(),
     "pull_request.title"),
    (json.dumps({"action": "opened"}).encode(), "repository.full_name"),
])  # fmt: skip
async def test_a_malformed_event_is_400_naming_the_problem(call: Call, body: bytes, param: str) -> None:
    _, headers = _github({})
    headers["x-hub-signature-256"] = payloads.github_signature(GITHUB_SECRET, body)
    status, answer = await call("POST", "/webhooks/github", body, headers)
    assert status == 400 and answer["error"]["param"] == param and param in answer["error"]["message"], answer
    assert await _tasks(call) == []


async def test_events_no_rule_takes_are_acknowledged_and_ignored(call: Call) -> None:
    ping = {"zen": "Keep it logically awesome.", "hook_id": 1, "repository": {"full_name": "acme/api"}}
    for payload, event in ((ping, "ping"), (payloads.github_pull_request(action="closed"), "pull_request")):
        body, headers = _github(payload, event=event)
        status, answer = await call("POST", "/webhooks/github", body, headers)
        assert (status, answer["status"]) == (202, "ignored")
    assert await _tasks(call) == []


async def test_gitlab_token_and_replay_window(call: Call) -> None:
    body = json.dumps(payloads.gitlab_merge_request()).encode()
    headers = {"x-gitlab-event": "Merge Request Hook", "x-gitlab-token": GITLAB_TOKEN, "x-gitlab-event-uuid": secrets.token_hex(8)}
    assert (await call("POST", "/webhooks/gitlab", body, {**headers, "x-gitlab-token": "wrong"}))[0] == 401
    stale = {**headers, "x-sluicegate-timestamp": str(int(time.time()) - 3600)}
    status, answer = await call("POST", "/webhooks/gitlab", body, stale)
    assert status == 401 and answer["error"]["code"] == "stale_delivery"
    assert (await call("POST", "/webhooks/gitlab", body, {**headers, "x-sluicegate-timestamp": "yesterday"}))[0] == 400
    status, answer = await call("POST", "/webhooks/gitlab", body, {**headers, "x-sluicegate-timestamp": str(int(time.time()))})
    assert status == 202, answer
    issue = json.dumps(payloads.gitlab_issue()).encode()
    issue_headers = {**headers, "x-gitlab-event": "Issue Hook", "x-gitlab-event-uuid": secrets.token_hex(8)}
    assert (await call("POST", "/webhooks/gitlab", issue, issue_headers))[0] == 202
    kinds = sorted((t["kind"], t["input"]["repository"]) for t in await _tasks(call))
    assert kinds == [("review", "acme/platform/api"), ("ticket_to_pr", "acme/platform/api")]


async def test_ado_basic_credentials_shared_secret_and_work_items(call: Call) -> None:
    pr = payloads.ado_pull_request()
    auth = {"authorization": payloads.basic("hooks", ADO_SECRET)}
    assert (await call("POST", "/webhooks/ado", json.dumps(pr).encode(), {"authorization": payloads.basic("hooks", "nope")}))[0] == 401
    assert (await call("POST", "/webhooks/ado", json.dumps(pr).encode(), auth))[0] == 202
    assert (await call("POST", "/webhooks/ado", json.dumps(pr).encode(), auth))[1]["status"] == "duplicate"  # the payload's id
    pr["id"] = secrets.token_hex(8)
    assert (await call("POST", "/webhooks/ado", json.dumps(pr).encode(), {"x-sluicegate-secret": ADO_SECRET}))[0] == 202
    item = json.dumps(payloads.ado_workitem_tagged()).encode()
    status, answer = await call("POST", "/webhooks/ado", item, auth)
    assert status == 202 and answer["kind"] == "ticket_to_pr", answer
    tasks = await _tasks(call)
    assert sorted(t["kind"] for t in tasks) == ["review", "review", "ticket_to_pr"]
    ticket = next(t for t in tasks if t["kind"] == "ticket_to_pr")["input"]
    assert (ticket["repository"], ticket["number"], ticket["subject"]) == ("fabrikam/Payments/api", 5, "issue")


async def test_a_failed_enqueue_forgets_the_delivery_so_a_retry_queues_it(call: Call, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Orchestrator.create
    failures = [TaskStoreUnavailable("down")]

    async def flaky(self: Orchestrator, *args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(Orchestrator, "create", flaky)
    body, headers = _github(payloads.github_pull_request())
    assert (await call("POST", "/webhooks/github", body, headers))[0] == 503
    assert await _tasks(call) == []
    status, answer = await call("POST", "/webhooks/github", body, headers)
    assert (status, answer["status"]) == (202, "queued")


async def test_size_method_and_path_are_checked(call: Call) -> None:
    body = b'{"pad": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    _, headers = _github({})
    headers["x-hub-signature-256"] = payloads.github_signature(GITHUB_SECRET, body)
    assert (await call("POST", "/webhooks/github", body, headers))[0] == 413
    assert (await call("POST", "/webhooks/github", body, {**headers, "content-length": str(len(body))}))[0] == 413
    assert (await call("GET", "/webhooks/github"))[0] == 405
    status, answer = await call("POST", "/webhooks/bitbucket", b"{}")
    assert status == 404 and set(answer["error"]) == {"message", "type", "param", "code"}


async def test_start_refuses_an_unresolved_secret_naming_the_key_not_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_GITHUB", GITHUB_SECRET)
    monkeypatch.delenv("GW_TEST_GITLAB", raising=False)
    options = msgspec.convert({"repositories": repositories()}, Options)
    plugin = GatewayPlugin(options, FakeServices(str(tmp_path), REDIS_URL))
    with pytest.raises(ConfigError) as caught:
        await plugin.start()
    text = str(caught.value)
    assert "options.repositories[1].secret" in text and "GW_TEST_GITLAB" in text and GITHUB_SECRET not in text
    monkeypatch.setenv("GW_TEST_GITLAB", "")
    monkeypatch.setenv("GW_TEST_ADO", "x")
    monkeypatch.setenv("GW_TEST_GLOBEX", "y")
    with pytest.raises(ConfigError, match=r"repositories\[1\]\.secret.*empty"):
        await GatewayPlugin(options, FakeServices(str(tmp_path), REDIS_URL)).start()
    monkeypatch.setenv("GW_TEST_GITLAB", GITLAB_TOKEN)
    with pytest.raises(ConfigError, match=r"state\.redis_url"):
        await GatewayPlugin(options, FakeServices(str(tmp_path), None)).start()


@pytest.mark.parametrize(("raw", "expected"), [
    ({"repositories": [{**repositories()[0]}, {**repositories()[0], "repository": "ACME/api"}]}, "repeats repositories[0]"),
    ({"repositories": [{**repositories()[0], "repository": "acme"}]}, "owner/name"),
    ({"repositories": [{**repositories()[2], "repository": "fabrikam/api"}]}, "organization/project/repository"),
    ({"repositories": [{**repositories()[0], "secret": "plain-text"}]}, "repositories[0].secret"),
    ({"repositories": [{**repositories()[0], "colour": "blue"}]}, "colour"),
    ({"dedup_ttl_s": 0}, "dedup_ttl_s"),
])  # fmt: skip
def test_options_are_strict_and_name_the_key(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(raw, Options)
    assert expected in str(caught.value)


ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL is not reachable at SLUICEGATE_TEST_POSTGRES_DSN")
    name = f"sg_gateway_{secrets.token_hex(6)}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_a_postgres_task_store_given_by_reference(
    tmp_path: Path, secret_env: None, redis_prefix: str, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TEST_TASKS_DSN", pg_dsn)
    raw = {"repositories": repositories(), "redis_prefix": redis_prefix, "store": {"env": "GW_TEST_TASKS_DSN"}}
    plugin = GatewayPlugin(msgspec.convert(raw, Options), FakeServices(str(tmp_path), REDIS_URL))
    await plugin.start()
    try:
        body, headers = _github(payloads.github_pull_request())
        status, answer = await call_app(plugin, "POST", "/webhooks/github", body, headers)
        assert status == 202, answer
        status, page = await call_app(plugin, "GET", "/api/v1/tasks", headers=READER)
        assert [t["id"] for t in page["data"]] == [answer["task_id"]]
        other = {"authorization": "Bearer sk-other"}
        assert (await call_app(plugin, "GET", f"/api/v1/tasks/{answer['task_id']}", headers=other))[0] == 404
    finally:
        await plugin.close()
    assert not (tmp_path / "tasks.sqlite").exists() and not (tmp_path.parent / "orchestrator" / "tasks.sqlite").exists()
