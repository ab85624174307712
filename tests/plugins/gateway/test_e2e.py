"""The gateway plugin in a real gateway process: signed deliveries become tasks; the task API serves them.

The plugin is installed (editable) like any distribution and found through its
entry point; the gateway runs as a subprocess on real Redis (a fresh key
prefix per module) with the embedded SQLite task store in its data directory.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis

from router.auth import hash_api_key
from tests.e2e.conftest import REPO, UPSTREAM_KEY, UPSTREAM_KEY_ENV, Process, free_port, gateway_config, serve
from tests.plugins.gateway import payloads
from tests.plugins.gateway.conftest import REDIS_URL

GITHUB_SECRET = "gh-e2e-" + secrets.token_hex(12)
GITLAB_TOKEN = "gl-e2e-" + secrets.token_hex(12)
ADO_SECRET = "ado-e2e-" + secrets.token_hex(12)
KEYS = {name: f"sk-gw-{name}-" + secrets.token_hex(8) for name in ("reader", "writer", "plain", "other")}
GITLAB_ENV, ADO_ENV = "SLUICEGATE_E2E_GW_GITLAB", "SLUICEGATE_E2E_GW_ADO"


def _auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name]}"}


def _key(name: str, *scopes: str) -> dict[str, Any]:
    return {"id": name, "hash": hash_api_key(KEYS[name]), "scopes": list(scopes)}


def _settings(workdir: Path, prefix: str) -> dict[str, Any]:
    # No model is called: the deployments point at a port where nothing listens.
    settings = gateway_config(f"http://127.0.0.1:{free_port()}/v1")
    settings["state"] = {"redis_url": REDIS_URL}
    settings["tenants"] += [
        {"id": "acme", "keys": [_key("reader", "tenant:read"), _key("writer", "tenant:write"), _key("plain")]},
        {"id": "globex", "keys": [_key("other", "tenant:write")]},
    ]
    (workdir / "github.secret").write_text(GITHUB_SECRET + "\n")
    repositories = [
        {"provider": "github", "repository": "acme/api", "tenant": "acme", "secret": {"file": str(workdir / "github.secret")}},
        {"provider": "gitlab", "repository": "acme/platform/api", "tenant": "acme", "secret": {"env": GITLAB_ENV}},
        {"provider": "ado", "repository": "fabrikam/Payments/api", "tenant": "acme", "secret": {"env": ADO_ENV}},
    ]
    settings["plugins"] = [{"name": "gateway", "options": {"repositories": repositories, "redis_prefix": prefix}}]
    return settings


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("Redis is not reachable at SLUICEGATE_TEST_REDIS_URL")
    prefix = f"sgtest-gateway-e2e:{secrets.token_hex(6)}"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_prefix: str) -> Iterator[Process]:
    workdir = tmp_path_factory.mktemp("gateway-plugin")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(GITLAB_ENV, GITLAB_TOKEN)
        env.setenv(ADO_ENV, ADO_SECRET)
        proc = serve(_settings(workdir, redis_prefix), workdir)
    yield proc
    proc.stop()
    assert GITHUB_SECRET not in proc.output() and GITLAB_TOKEN not in proc.output()


@pytest.fixture
def http(gateway: Process) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=20.0) as client:
        yield client


def _github(http: httpx.Client, payload: dict[str, Any], delivery: str, secret: str = GITHUB_SECRET) -> httpx.Response:
    body = json.dumps(payload).encode()
    headers = {
        "x-github-event": "pull_request",
        "x-github-delivery": delivery,
        "x-hub-signature-256": payloads.github_signature(secret, body),
        "content-type": "application/json",
    }
    return http.post("/webhooks/github", content=body, headers=headers)


def _tasks_of(http: httpx.Client, delivery: str) -> list[dict[str, Any]]:
    page = http.get("/api/v1/tasks", params={"limit": 100}, headers=_auth("reader"))
    assert page.status_code == 200, page.text
    return [t for t in page.json()["data"] if isinstance(t["input"], dict) and t["input"].get("delivery_id") == delivery]


def test_a_signed_github_delivery_makes_exactly_one_task(http: httpx.Client) -> None:
    delivery = secrets.token_hex(8)
    first = _github(http, payloads.github_pull_request(), delivery)
    assert first.status_code == 202 and first.json()["status"] == "queued", first.text
    [task] = _tasks_of(http, delivery)
    assert task["id"] == first.json()["task_id"] and task["kind"] == "review" and task["input"]["repository"] == "acme/api"
    again = _github(http, payloads.github_pull_request(), delivery)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert len(_tasks_of(http, delivery)) == 1


def test_a_bad_signature_is_401_and_queues_nothing(http: httpx.Client) -> None:
    delivery = secrets.token_hex(8)
    refused = _github(http, payloads.github_pull_request(), delivery, secret="guessed")
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    unsigned = http.post(
        "/webhooks/github", json=payloads.github_pull_request(), headers={"x-github-event": "pull_request", "x-github-delivery": delivery}
    )
    assert unsigned.status_code == 401
    assert _tasks_of(http, delivery) == []


def test_gitlab_and_ado_deliveries_make_tasks(http: httpx.Client) -> None:
    gl_delivery = secrets.token_hex(8)
    gitlab = http.post(
        "/webhooks/gitlab",
        json=payloads.gitlab_merge_request(),
        headers={"x-gitlab-event": "Merge Request Hook", "x-gitlab-token": GITLAB_TOKEN, "x-gitlab-event-uuid": gl_delivery},
    )
    assert gitlab.status_code == 202, gitlab.text
    assert [t["kind"] for t in _tasks_of(http, gl_delivery)] == ["review"]
    item = payloads.ado_workitem_tagged()
    item["id"] = ado_delivery = secrets.token_hex(8)
    ado = http.post("/webhooks/ado", json=item, headers={"authorization": payloads.basic("sluicegate", ADO_SECRET)})
    assert ado.status_code == 202, ado.text
    [ticket] = _tasks_of(http, ado_delivery)
    assert ticket["kind"] == "ticket_to_pr" and ticket["input"]["repository"] == "fabrikam/Payments/api"


def test_task_api_idempotency_tenancy_scopes_and_bad_input(http: httpx.Client) -> None:
    key = {"idempotency-key": secrets.token_hex(8)}
    body = {"kind": "review", "input": {"pr": 9}}
    created = http.post("/api/v1/tasks", json=body, headers={**_auth("writer"), **key})
    assert created.status_code == 201, created.text
    same = http.post("/api/v1/tasks", json=body, headers={**_auth("writer"), **key})
    assert same.status_code == 200 and same.json()["id"] == created.json()["id"]
    task_id = created.json()["id"]
    # Another tenant's key: the task does not exist for it, to read or to cancel.
    assert http.get(f"/api/v1/tasks/{task_id}", headers=_auth("other")).status_code == 404
    assert http.post(f"/api/v1/tasks/{task_id}/cancel", headers=_auth("other")).status_code == 404
    assert http.get(f"/api/v1/tasks/{task_id}", headers=_auth("reader")).json()["status"] == "queued"
    # Scopes: no scope, no reading; tenant:read, no writing.
    assert http.get(f"/api/v1/tasks/{task_id}", headers=_auth("plain")).status_code == 403
    assert http.post("/api/v1/tasks", json=body, headers=_auth("reader")).status_code == 403
    assert http.post(f"/api/v1/tasks/{task_id}/cancel", headers=_auth("reader")).status_code == 403
    assert http.get("/api/v1/tasks", headers={"authorization": "Bearer sk-wrong"}).status_code == 401
    bad = http.post("/api/v1/tasks", json={"input": {}}, headers=_auth("writer"))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "kind" and "kind" in bad.json()["error"]["message"]
    cancelled = http.post(f"/api/v1/tasks/{task_id}/cancel", headers=_auth("writer"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def test_a_missing_secret_refuses_to_serve_naming_the_key(tmp_path: Path, redis_prefix: str) -> None:
    settings = _settings(tmp_path, redis_prefix)
    config = tmp_path / "sluicegate.yaml"
    config.write_bytes(msgspec.yaml.encode(settings))
    env = {k: v for k, v in os.environ.items() if k not in (GITLAB_ENV, ADO_ENV)}
    env.update(PYTHONPATH=str(REPO), **{UPSTREAM_KEY_ENV: UPSTREAM_KEY})
    args = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(free_port())]
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "options.repositories[1].secret" in output and GITLAB_ENV in output, output[-3000:]
    assert GITHUB_SECRET not in output
