"""Batches passed through to an upstream's own Batch API (`batches: native`), through the unmodified OpenAI SDK.

The gateway and a fake upstream of this module's own (its behaviour override
is changed here) run as subprocesses. The alias `native-model` is served by a
deployment with `options: {batches: native}`: the gateway uploads the lines to
the fake's /v1/files, creates its batch, polls it, and turns its results into
the gateway's own files and ledger rows.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from router.auth import hash_api_key
from tests.e2e.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, Process, free_port, gateway_config, serve, spawn

PRICE = {"input_per_mtok": 1_000_000, "output_per_mtok": 3_000_000}  # batch price: half of each
OWNER_KEY = "sk-e2e-native-" + secrets.token_hex(12)
PII_KEY = "sk-e2e-native-pii-" + secrets.token_hex(12)
POOR_KEY = "sk-e2e-native-poor-" + secrets.token_hex(12)
TERMINAL = {"completed", "failed", "cancelled", "expired"}
BUDGET_MICRO_USD = 50_000_000


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    port = free_port()
    log = tmp_path_factory.mktemp("fake-native") / "fake.log"
    args = [sys.executable, "-m", "bench.fake_upstream", "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn(args, log, f"http://127.0.0.1:{port}", "/v1/models")
    yield proc
    proc.stop()


def _native(name: str, base_url: str, delay_ms: int) -> dict[str, Any]:
    options = {"batches": "native", "extra_headers": {"x-fake-batch-delay-ms": str(delay_ms)}}
    return {"name": name, "provider": "openai", "base_url": base_url, "model": "fake-model", "api_key": {"env": UPSTREAM_KEY_ENV},
            "price": PRICE, "options": options}  # fmt: skip


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Process) -> Iterator[Process]:
    base = upstream.url + "/v1"
    settings = gateway_config(base)
    settings["deployments"] += [_native("native", base, 300), _native("native-slow", base, 1500), _native("native-hold", base, 600_000)]
    settings["models"] += [
        {"alias": "native-model", "deployments": ["native"]},
        {"alias": "native-slow", "deployments": ["native-slow"]},
        {"alias": "native-hold", "deployments": ["native-hold"]},
    ]
    budget = [{"kind": "money", "period": "monthly", "limit": BUDGET_MICRO_USD}]
    settings["tenants"] = [
        {"id": "owner", "budgets": budget, "keys": [{"id": "owner-key", "hash": hash_api_key(OWNER_KEY)}]},
        {"id": "poor", "budgets": [{"kind": "money", "period": "monthly", "limit": 1}],
         "keys": [{"id": "poor-key", "hash": hash_api_key(POOR_KEY)}]},
        {"id": "private", "pii": {"action": "redact", "entities": ["EMAIL_ADDRESS"]},
         "keys": [{"id": "pii-key", "hash": hash_api_key(PII_KEY)}]},
    ]  # fmt: skip
    settings["batches"] = {"poll_interval_s": 0.2, "lease_s": 3}
    proc = serve(settings, tmp_path_factory.mktemp("native-batches"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sdk(gateway: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=OWNER_KEY, max_retries=0, timeout=20.0) as client:
        yield client


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(line) for line in lines).encode() + b"\n"


def _chat(custom_id: str, model: str, text: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _submit(client: openai.OpenAI, lines: list[dict[str, Any]], endpoint: Any = "/v1/chat/completions") -> str:
    uploaded = client.files.create(file=("requests.jsonl", _jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h").id


def _wait(client: openai.OpenAI, batch_id: str, done: set[str] = TERMINAL, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in done:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout_s}s")


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return [] if file_id is None else [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def _recorded(upstream: Process) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = httpx.get(upstream.url + "/_fake/requests", timeout=5.0).json()
    return result


def _upload_of(upstream: Process, marker: str) -> dict[str, Any] | None:
    for request in _recorded(upstream):
        if request["path"] == "/v1/files" and marker in json.dumps(request["json"]):
            return request
    return None


def _wait_upstream_batch(upstream: Process, batch_id: str, timeout_s: float = 15.0) -> str:
    """The fake's id of the batch the gateway created for ``batch_id``: the one it polls right after creating it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        recorded = _recorded(upstream)
        created = [
            i for i, r in enumerate(recorded)
            if r["path"] == "/v1/batches" and r["method"] == "POST"
            and (r["json"].get("metadata") or {}).get("sluicegate_batch_id") == batch_id
        ]  # fmt: skip
        polls = (
            [r["path"] for r in recorded[created[0] :] if r["method"] == "GET" and r["path"].startswith("/v1/batches/")] if created else []
        )
        if polls:
            return str(polls[0].rsplit("/", 1)[-1])
        time.sleep(0.1)
    raise AssertionError("the upstream batch was never created")


def _ledger(proc: Process, batch_id: str, want: int, timeout_s: float = 10.0) -> list[tuple[Any, ...]]:
    path = Path(proc.log).parent / "sluicegate-ledger.sqlite"
    sql = "SELECT request_id, model, deployment, prompt_tokens, completion_tokens, cost, status FROM ledger WHERE batch_id = ?"
    deadline = time.monotonic() + timeout_s
    while True:
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(sql, (batch_id,)).fetchall()
        finally:
            conn.close()
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def _set_behavior(upstream: Process, behavior: str | None) -> None:
    httpx.post(upstream.url + "/_fake/behavior", json={"behavior": behavior}, timeout=5.0).raise_for_status()


def _money_budget(gateway: Process) -> dict[str, Any]:
    answer = httpx.get(gateway.url + "/v1/ledger/budgets", headers={"authorization": f"Bearer {OWNER_KEY}"}, timeout=5.0)
    answer.raise_for_status()
    [line] = [line for line in answer.json()["data"] if line["kind"] == "money"]
    return dict(line)


def test_a_native_batch_runs_upstream_and_comes_back_as_the_gateways(sdk: openai.OpenAI, gateway: Process, upstream: Process) -> None:
    marker = secrets.token_hex(6)
    lines = [_chat(f"native-{i}-{marker}", "native-model", f"Say hello {marker} number {i}") for i in range(4)]
    lines.append(_chat(f"bad-{marker}", "native-model", f"fake-behavior:error_400 {marker}"))
    batch = _wait(sdk, _submit(sdk, lines))
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 4, 1)

    # The upstream got its own model name, never the alias; the deployment's key, never the tenant's.
    upload = _upload_of(upstream, marker)
    assert upload is not None and upload["json"]["purpose"] == "batch"
    sent = upload["json"]["lines"]
    assert sorted(line["custom_id"] for line in sent) == sorted(line["custom_id"] for line in lines)
    for line in sent:
        assert line["body"]["model"] == "fake-model" and line["url"] == "/v1/chat/completions"
        assert line["body"]["max_tokens"] == 4096  # the bound the budget reservation counted
    batch_calls = [r for r in _recorded(upstream) if r["path"].startswith(("/v1/files", "/v1/batches"))]
    assert batch_calls
    for call in batch_calls:
        assert call["headers"].get("authorization") == f"Bearer {UPSTREAM_KEY}"
        assert OWNER_KEY not in json.dumps(call)
    [create] = [r for r in batch_calls if r["path"] == "/v1/batches" and r["method"] == "POST" and r["json"]["input_file_id"]
                and r["json"]["metadata"]["sluicegate_batch_id"] == batch.id]  # fmt: skip
    assert create["json"]["endpoint"] == "/v1/chat/completions" and create["json"]["completion_window"] == "24h"

    # The gateway's output file, parsed by the SDK's own types: the alias as model, the client's custom ids.
    results = _lines(sdk, batch.output_file_id)
    assert sorted(r["custom_id"] for r in results) == sorted(f"native-{i}-{marker}" for i in range(4))
    for result in results:
        assert result["id"].startswith("batch_req_") and "fake" not in result["id"]
        assert result["response"]["status_code"] == 200 and "fake" not in result["response"]["request_id"]
        completion = ChatCompletion.model_validate(result["response"]["body"])
        assert completion.model == "native-model" and completion.choices[0].message.content
    [error] = _lines(sdk, batch.error_file_id)
    assert error["custom_id"] == f"bad-{marker}" and error["response"]["status_code"] == 400

    # One ledger row per request, at the batch price, naming the batch.
    rows = _ledger(gateway, batch.id, want=5)
    assert len(rows) == 5
    ids = {r["response"]["request_id"] for r in [*results, error]}
    assert {row[0] for row in rows} == ids
    total = 0
    for _, model, deployment, prompt, completion_tokens, cost, status in rows:
        assert (model, deployment) == ("native-model", "native")
        assert cost == prompt * PRICE["input_per_mtok"] // 2 + completion_tokens * PRICE["output_per_mtok"] // 2
        total += cost
        assert status in (200, 400)
    assert sum(1 for row in rows if row[6] == 200 and row[5] > 0) == 4
    assert batch.usage is not None and batch.usage.input_tokens == sum(r[3] for r in rows if r[6] == 200)

    # The reservation was settled with the real cost: nothing left reserved, the cost spent.
    budget = _money_budget(gateway)
    assert budget["reserved"] == 0 and budget["spent"] >= total > 0


def test_cancel_is_forwarded_upstream(sdk: openai.OpenAI, upstream: Process) -> None:
    marker = secrets.token_hex(6)
    batch_id = _submit(sdk, [_chat(f"hold-{marker}", "native-hold", f"wait {marker}")])
    upstream_id = _wait_upstream_batch(upstream, batch_id)
    cancelling = sdk.batches.cancel(batch_id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = _wait(sdk, batch_id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    cancels = [r for r in _recorded(upstream) if r["method"] == "POST" and r["path"] == f"/v1/batches/{upstream_id}/cancel"]
    assert len(cancels) == 1


def test_an_upstream_outage_while_polling_does_not_fail_the_batch(sdk: openai.OpenAI, upstream: Process) -> None:
    marker = secrets.token_hex(6)
    batch_id = _submit(sdk, [_chat(f"outage-{i}-{marker}", "native-slow", f"hello {marker}") for i in range(3)])
    upstream_id = _wait_upstream_batch(upstream, batch_id)
    _set_behavior(upstream, "error_503")
    try:
        time.sleep(2.5)  # past the upstream's own completion time: every poll meanwhile got a 503
        assert sdk.batches.retrieve(batch_id).status == "in_progress"
    finally:
        _set_behavior(upstream, None)
    polls = [r for r in _recorded(upstream) if r["method"] == "GET" and r["path"] == f"/v1/batches/{upstream_id}"]
    assert len(polls) >= 3
    batch = _wait(sdk, batch_id)
    assert batch.status == "completed" and batch.request_counts is not None and batch.request_counts.completed == 3


def test_an_upstream_4xx_on_create_fails_the_batch_naming_the_status(sdk: openai.OpenAI, upstream: Process) -> None:
    _set_behavior(upstream, "error_400")
    try:
        batch = _wait(sdk, _submit(sdk, [_chat("refused", "native-model", "hello")]))
    finally:
        _set_behavior(upstream, None)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    [error] = batch.errors.data
    assert error.code == "upstream_rejected" and error.message is not None and "400" in error.message
    assert UPSTREAM_KEY not in error.message


def test_embeddings_pass_through(sdk: openai.OpenAI) -> None:
    body = {"model": "native-model", "input": "embed me"}
    lines = [{"custom_id": "e1", "method": "POST", "url": "/v1/embeddings", "body": body}]
    batch = _wait(sdk, _submit(sdk, lines, endpoint="/v1/embeddings"))
    assert batch.status == "completed"
    [result] = _lines(sdk, batch.output_file_id)
    embedding = CreateEmbeddingResponse.model_validate(result["response"]["body"])
    assert embedding.model == "native-model" and embedding.data


def test_a_tenant_with_a_pii_policy_is_run_by_the_gateway(gateway: Process, upstream: Process) -> None:
    marker = secrets.token_hex(6)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=PII_KEY, max_retries=0, timeout=20.0) as client:
        batch = _wait(client, _submit(client, [_chat(f"pii-{marker}", "native-model", f"mail me at a@example.com {marker}")]))
        assert batch.status == "completed"
        [result] = _lines(client, batch.output_file_id)
    assert result["custom_id"] == f"pii-{marker}"
    assert _upload_of(upstream, marker) is None
    chats = [r for r in _recorded(upstream) if r["path"] == "/v1/chat/completions" and marker in json.dumps(r["json"])]
    assert chats and "a@example.com" not in json.dumps(chats)


def test_a_budget_that_cannot_hold_the_worst_case_fails_the_batch_before_anything_is_sent(gateway: Process, upstream: Process) -> None:
    marker = secrets.token_hex(6)
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=POOR_KEY, max_retries=0, timeout=20.0) as client:
        batch = _wait(client, _submit(client, [_chat(f"poor-{marker}", "native-model", f"hello {marker}")]))
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data
    assert batch.errors.data[0].code == "insufficient_quota"
    assert _upload_of(upstream, marker) is None
