"""The task API through the plugin's ASGI app: idempotency, scopes, tenancy, and bad input named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.plugins.gateway.conftest import Call

READER = {"authorization": "Bearer sk-reader"}
WRITER = {"authorization": "Bearer sk-writer"}
OTHER = {"authorization": "Bearer sk-other"}


async def _create(call: Call, body: object, headers: dict[str, str] = WRITER, key: str | None = None) -> tuple[int, dict[str, Any]]:
    extra = {"idempotency-key": key} if key is not None else {}
    return await call("POST", "/api/v1/tasks", json.dumps(body).encode(), {**headers, **extra})


async def test_create_get_and_the_same_idempotency_key_returns_the_same_task(call: Call) -> None:
    status, first = await _create(call, {"kind": "review", "input": {"pr": 1}}, key="k-1")
    assert status == 201 and first["object"] == "task" and first["status"] == "queued" and first["idempotency_key"] == "k-1", first
    status, again = await _create(call, {"kind": "review", "input": {"pr": 1}}, key="k-1")
    assert status == 200 and again["id"] == first["id"]
    status, conflict = await _create(call, {"kind": "review", "input": {"pr": 2}}, key="k-1")
    assert status == 409 and conflict["error"]["code"] == "idempotency_key_reused"
    status, fetched = await call("GET", f"/api/v1/tasks/{first['id']}", headers=READER)
    assert status == 200 and fetched["input"] == {"pr": 1} and "tenant" not in fetched and "lease_owner" not in fetched
    # Without a key every create is a new task.
    assert (await _create(call, {"kind": "review"}))[0] == 201
    assert (await _create(call, {"kind": "review"}))[0] == 201


async def test_list_pages_and_filters(call: Call) -> None:
    ids = [(await _create(call, {"kind": "ticket_to_pr", "input": i}))[1]["id"] for i in range(3)]
    status, page = await call("GET", "/api/v1/tasks", headers=READER, query="limit=2")
    assert status == 200 and page["has_more"] is True and [t["id"] for t in page["data"]] == ids[::-1][:2]
    status, rest = await call("GET", "/api/v1/tasks", headers=READER, query=f"limit=2&after={page['last_id']}")
    assert [t["id"] for t in rest["data"]] == [ids[0]] and rest["has_more"] is False
    await call("POST", f"/api/v1/tasks/{ids[1]}/cancel", headers=WRITER)
    status, cancelled = await call("GET", "/api/v1/tasks", headers=READER, query="status=cancelled")
    assert [t["id"] for t in cancelled["data"]] == [ids[1]]


@pytest.mark.parametrize(
    ("query", "param"), [("limit=0", "limit"), ("limit=abc", "limit"), ("status=done", "status"), ("colour=red", "colour")]
)
async def test_bad_list_arguments_are_named(call: Call, query: str, param: str) -> None:
    status, answer = await call("GET", "/api/v1/tasks", headers=READER, query=query)
    assert status == 400 and answer["error"]["param"] == param


async def test_another_tenants_task_is_not_found_for_get_and_cancel(call: Call) -> None:
    _, mine = await _create(call, {"kind": "review", "input": "secret plan"})
    for method, path in (("GET", f"/api/v1/tasks/{mine['id']}"), ("POST", f"/api/v1/tasks/{mine['id']}/cancel")):
        status, answer = await call(method, path, headers=OTHER)
        assert status == 404 and answer["error"]["code"] == "task_not_found"
    status, page = await call("GET", "/api/v1/tasks", headers=OTHER)
    assert page["data"] == []
    # Their "same" idempotency key is theirs: a task of their own, not ours.
    _, keyed = await _create(call, {"kind": "review"}, key="shared")
    _, theirs = await _create(call, {"kind": "review"}, OTHER, key="shared")
    assert theirs["id"] != keyed["id"]
    status, still = await call("GET", f"/api/v1/tasks/{mine['id']}", headers=READER)
    assert status == 200 and still["status"] == "queued"


async def test_cancel(call: Call) -> None:
    _, task = await _create(call, {"kind": "review"})
    status, cancelled = await call("POST", f"/api/v1/tasks/{task['id']}/cancel", headers=WRITER)
    assert status == 200 and cancelled["status"] == "cancelled"
    assert (await call("POST", "/api/v1/tasks/task_000000000000000000000000/cancel", headers=WRITER))[0] == 404
    assert (await call("GET", "/api/v1/tasks/not-a-task-id", headers=READER))[0] == 404


async def test_scopes(call: Call) -> None:
    assert (await call("GET", "/api/v1/tasks"))[0] == 401
    assert (await call("GET", "/api/v1/tasks", headers={"authorization": "Bearer sk-nonesuch"}))[0] == 401
    status, answer = await call("GET", "/api/v1/tasks", headers={"authorization": "Bearer sk-plain"})
    assert status == 403 and "tenant:read" in answer["error"]["message"]
    status, answer = await _create(call, {"kind": "review"}, READER)
    assert status == 403 and "tenant:write" in answer["error"]["message"]
    _, task = await _create(call, {"kind": "review"})
    assert (await call("POST", f"/api/v1/tasks/{task['id']}/cancel", headers=READER))[0] == 403
    ops = {"authorization": "Bearer sk-ops"}
    assert (await _create(call, {"kind": "review"}, ops))[0] == 201
    assert (await call("GET", f"/api/v1/tasks/{task['id']}", headers=ops))[0] == 200
    assert (await call("GET", f"/api/v1/tasks/{task['id']}", headers=WRITER))[0] == 200  # write includes read


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", "body"),
    (b"[]", "body"),
    (b"{}", "kind"),
    (b'{"kind": 7}', "kind"),
    (b'{"kind": "review", "priority": 1}', "priority"),
    (b'{"kind": "mine_bitcoin"}', "kind"),
])  # fmt: skip
async def test_a_malformed_task_is_400_naming_the_field(call: Call, body: bytes, param: str) -> None:
    status, answer = await call("POST", "/api/v1/tasks", body, WRITER)
    assert status == 400 and answer["error"]["param"] == param, answer
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    status, page = await call("GET", "/api/v1/tasks", headers=READER)
    assert page["data"] == []


async def test_bad_idempotency_key_method_and_path(call: Call) -> None:
    status, answer = await _create(call, {"kind": "review"}, key="k" * 201)
    assert status == 400 and answer["error"]["param"] == "Idempotency-Key"
    assert (await call("DELETE", "/api/v1/tasks", headers=WRITER))[0] == 405
    assert (await call("GET", "/api/v1/tasks/x/cancel", headers=READER))[0] == 405
    assert (await call("GET", "/api/v1/tasks/x/y", headers=READER))[0] == 404
