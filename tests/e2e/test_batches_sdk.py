"""The Files and Batches APIs through the unmodified OpenAI SDK, against a running gateway and the fake upstream.

The gateway here has aliases of its own: a priced one (to compare batch and
interactive costs in the ledger), and a slow one with a queue (to see the
batch class yield to interactive requests). Batch requests are billed at half
the interactive price by default.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from router.auth import hash_api_key
from tests.e2e.conftest import Process, gateway_config, serve

PRICE = {"input_per_mtok": 1_000_000, "output_per_mtok": 3_000_000}  # even halves: batch = interactive / 2 exactly
SERVICE_S = 0.2  # the slow alias's upstream time per request
# Keys of their own: this module's gateway is not the shared one.
OWNER_KEY = "sk-e2e-owner-" + secrets.token_hex(12)
OTHER_KEY = "sk-e2e-other-" + secrets.token_hex(12)
USER = [{"role": "user", "content": "Say hello please"}]
TERMINAL = {"completed", "failed", "cancelled", "expired"}
MAX_FILE_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def batch_gateway(tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[Process]:
    settings = gateway_config(fake_server.url + "/v1")
    upstream = fake_server.url + "/v1"
    delay = {"extra_headers": {"x-fake-delay-ms": str(int(SERVICE_S * 1000))}}
    settings["deployments"] += [
        {"name": "priced", "provider": "openai", "base_url": upstream, "model": "fake-normal", "price": PRICE},
        {"name": "slow-queued", "provider": "openai", "base_url": upstream, "model": "fake-slow", "options": delay},
    ]
    settings["models"] += [
        {"alias": "priced-model", "deployments": ["priced"]},
        {"alias": "queued-model", "deployments": ["slow-queued"], "max_concurrent": 4},
    ]
    settings["tenants"] = [
        {"id": "owner", "keys": [{"id": "owner-key", "hash": hash_api_key(OWNER_KEY)}]},
        {"id": "other", "keys": [{"id": "other-key", "hash": hash_api_key(OTHER_KEY)}]},
    ]
    settings["batches"] = {"poll_interval_s": 0.2, "max_concurrent": 4, "max_file_bytes": MAX_FILE_BYTES}
    workdir = tmp_path_factory.mktemp("batches")
    proc = serve(settings, workdir)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def sdk(batch_gateway: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=batch_gateway.url + "/v1", api_key=OWNER_KEY, max_retries=0, timeout=20.0) as client:
        yield client


@pytest.fixture(scope="module")
def other(batch_gateway: Process) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=batch_gateway.url + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=20.0) as client:
        yield client


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(line) for line in lines).encode() + b"\n"


def _chat_lines(n: int, model: str, prefix: str = "req") -> list[dict[str, Any]]:
    body = {"model": model, "messages": USER}
    return [{"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body} for i in range(n)]


def _submit(sdk: openai.OpenAI, lines: list[dict[str, Any]], endpoint: Any = "/v1/chat/completions", **extra: Any) -> tuple[str, str]:
    uploaded = sdk.files.create(file=("requests.jsonl", _jsonl(lines)), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h", **extra)
    assert batch.status == "validating" and batch.input_file_id == uploaded.id
    return uploaded.id, batch.id


def _wait(sdk: openai.OpenAI, batch_id: str, done: set[str] = TERMINAL, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in done:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout_s}s")


def _lines(sdk: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in sdk.files.content(file_id).text.splitlines()]


def _ledger(proc: Process, sql: str, *args: object, want: int = 1, timeout_s: float = 10.0) -> list[tuple[Any, ...]]:
    """Rows of the gateway's embedded ledger, once at least ``want`` are there (rows are written in batches)."""
    deadline = time.monotonic() + timeout_s
    path = Path(proc.log).parent / "sluicegate-ledger.sqlite"
    while True:
        conn = sqlite3.connect(path)
        try:
            rows = conn.execute(sql, args).fetchall()
        finally:
            conn.close()
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_a_batch_of_200_chat_requests_runs_at_the_batch_price(sdk: openai.OpenAI, batch_gateway: Process) -> None:
    _, batch_id = _submit(sdk, _chat_lines(200, "priced-model"))
    batch = _wait(sdk, batch_id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (200, 200, 0)
    assert batch.error_file_id is None and batch.output_file_id is not None
    assert batch.in_progress_at is not None and batch.finalizing_at is not None and batch.completed_at is not None
    output = sdk.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    results = _lines(sdk, batch.output_file_id)
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(200))
    for result in results:
        assert result["error"] is None and result["id"].startswith("batch_req_")
        response = result["response"]
        assert response["status_code"] == 200 and response["request_id"]
        assert response["body"]["object"] == "chat.completion" and response["body"]["choices"][0]["message"]["content"]
    # the ledger: one row per request, naming the batch, at half the interactive price for the same usage
    rows = _ledger(batch_gateway, "SELECT cost, prompt_tokens, completion_tokens FROM ledger WHERE batch_id = ?", batch_id, want=200)
    assert len(rows) == 200
    reply = sdk.with_raw_response.chat.completions.create(model="priced-model", messages=USER)  # type: ignore[arg-type]
    request_id = reply.headers["x-request-id"]
    [(interactive_cost, prompt, completion, interactive_batch)] = _ledger(
        batch_gateway, "SELECT cost, prompt_tokens, completion_tokens, batch_id FROM ledger WHERE request_id = ?", request_id
    )
    assert interactive_batch is None
    assert interactive_cost == prompt * PRICE["input_per_mtok"] + completion * PRICE["output_per_mtok"]
    for cost, batch_prompt, batch_completion in rows:
        assert (batch_prompt, batch_completion) == (prompt, completion)
        assert cost * 2 == interactive_cost


def test_a_bad_input_file_fails_with_errors_naming_its_lines(sdk: openai.OpenAI) -> None:
    good = _chat_lines(1, "fake-model")[0]
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "custom_id": "b", "url": "/v1/embeddings"}),
        json.dumps(good),  # the custom id again
        json.dumps({**good, "custom_id": "d", "body": {"model": "no-such-model", "messages": USER}}),
        json.dumps({**good, "custom_id": "e", "method": "GET"}),
    ]
    uploaded = sdk.files.create(file=("bad.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = _wait(sdk, batch.id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    found = [(e.line, e.code) for e in batch.errors.data]
    assert found == [
        (2, "invalid_json_line"), (3, "invalid_url"), (4, "duplicate_custom_id"), (5, "model_not_found"), (6, "invalid_method"),
    ]  # fmt: skip
    assert batch.output_file_id is None and batch.in_progress_at is None


def test_cancel_stops_the_batch_with_partial_output(sdk: openai.OpenAI) -> None:
    _, batch_id = _submit(sdk, _chat_lines(40, "queued-model", prefix="cancel"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        batch = sdk.batches.retrieve(batch_id)
        if batch.request_counts is not None and batch.request_counts.completed >= 3:
            break
        time.sleep(0.05)
    cancelling = sdk.batches.cancel(batch_id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at is not None
    batch = _wait(sdk, batch_id)
    assert batch.status == "cancelled" and batch.cancelled_at is not None
    assert batch.request_counts is not None
    done = batch.request_counts.completed
    assert 3 <= done < 40 and batch.request_counts.failed == 0
    assert len(_lines(sdk, batch.output_file_id)) == done
    with pytest.raises(openai.ConflictError):
        sdk.batches.cancel(_submit_and_finish(sdk))


def _submit_and_finish(sdk: openai.OpenAI) -> str:
    _, batch_id = _submit(sdk, _chat_lines(2, "fake-model", prefix="done"))
    assert _wait(sdk, batch_id).status == "completed"
    return batch_id


def test_another_tenant_sees_neither_the_batch_nor_its_files(sdk: openai.OpenAI, other: openai.OpenAI) -> None:
    expiry = {"anchor": "created_at", "seconds": 3600}
    file_id, batch_id = _submit(sdk, _chat_lines(3, "fake-model", prefix="mine"), metadata={"team": "search"}, output_expires_after=expiry)
    batch = _wait(sdk, batch_id)
    assert batch.status == "completed" and batch.output_file_id is not None and batch.metadata == {"team": "search"}
    output = sdk.files.retrieve(batch.output_file_id)
    assert output.expires_at is not None and 3590 <= output.expires_at - output.created_at <= 3600
    for call in (
        lambda: other.batches.retrieve(batch_id),
        lambda: other.batches.cancel(batch_id),
        lambda: other.files.retrieve(file_id),
        lambda: other.files.content(file_id),
        lambda: other.files.retrieve(batch.output_file_id),
        lambda: other.files.delete(file_id),
        lambda: other.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch_id not in {b.id for b in other.batches.list()}
    assert not {file_id, batch.output_file_id} & {f.id for f in other.files.list()}
    # still the owner's, whole
    assert sdk.files.retrieve(file_id).id == file_id
    assert batch_id in {b.id for b in sdk.batches.list(limit=100)}
    assert sdk.files.delete(file_id).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(file_id)


def test_interactive_requests_keep_their_latency_while_a_batch_fills_the_alias(sdk: openai.OpenAI) -> None:
    def p50(n: int) -> float:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            sdk.chat.completions.create(model="queued-model", messages=USER)  # type: ignore[arg-type]
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    before = p50(7)
    _, batch_id = _submit(sdk, _chat_lines(60, "queued-model", prefix="busy"))
    _wait(sdk, batch_id, done={"in_progress"} | TERMINAL)
    time.sleep(SERVICE_S * 2)  # the batch holds every slot it may by now
    during = p50(7)
    batch = sdk.batches.retrieve(batch_id)
    assert batch.status == "in_progress", "the batch ended before the interactive requests were measured"
    sdk.batches.cancel(batch_id)
    # A batch that took every slot would make each interactive request wait for one (SERVICE_S / 2 on average).
    assert during < before + SERVICE_S * 0.35, (before, during)
    assert _wait(sdk, batch_id).status == "cancelled"


def test_files_list_filters_and_pages(sdk: openai.OpenAI) -> None:
    ids = [sdk.files.create(file=(f"n{i}.txt", b"hello"), purpose="user_data").id for i in range(3)]
    listed = [f.id for f in sdk.files.list(purpose="user_data")]
    assert listed[:3] == ids[::-1]  # newest first
    first = sdk.files.list(purpose="user_data", limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    assert [f.id for f in sdk.files.list(purpose="user_data", limit=2, after=ids[1])] == [ids[0]]
    assert all(f.purpose == "batch_output" for f in sdk.files.list(purpose="batch_output"))
    assert sdk.files.content(ids[0]).content == b"hello"


FORM = {"content-type": "multipart/form-data; boundary=xyz"}


def _part(name: bytes, value: bytes, headers: bytes = b"") -> bytes:
    return b'--xyz\r\nContent-Disposition: form-data; name="' + name + b'"\r\n' + headers + b"\r\n" + value + b"\r\n--xyz--\r\n"


def test_bad_uploads_are_4xx_in_the_openai_shape(batch_gateway: Process) -> None:
    headers = {"authorization": f"Bearer {OWNER_KEY}"}
    with httpx.Client(base_url=batch_gateway.url, headers=headers, timeout=10.0) as http:
        cases = [
            http.post("/v1/files", content=b"not multipart", headers={"content-type": "application/json"}),
            http.post("/v1/files", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}),
            http.post("/v1/files", content=b"", headers={"content-type": "multipart/form-data"}),
            http.post("/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "batch_output"}),
            http.post("/v1/files", data={"purpose": "batch"}, files={"other": ("a", b"x")}),
            http.post("/v1/batches", json={"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            http.post("/v1/batches", json={"input_file_id": "file-x", "endpoint": "/v1/images", "completion_window": "24h"}),
            http.post("/v1/batches", content=b"[1,2"),
            http.post("/v1/files", content=_part(b"purpose", b"\xff\xfe"), headers=FORM),
            http.post("/v1/files", content=_part(b"purpose", b"batch", b"Content-Type: text/plain; charset=bogus\r\n"), headers=FORM),
            http.get("/v1/files/../../etc/passwd"),
            http.get("/v1/batches", params={"limit": "0"}),
        ]
    for response in cases:
        assert 400 <= response.status_code < 500, (response.status_code, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_an_embeddings_batch(sdk: openai.OpenAI) -> None:
    lines = [
        {"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "embed-model", "input": f"text {i}"}}
        for i in range(3)
    ]
    _, batch_id = _submit(sdk, lines, endpoint="/v1/embeddings")
    batch = _wait(sdk, batch_id)
    assert batch.status == "completed" and batch.endpoint == "/v1/embeddings"
    results = _lines(sdk, batch.output_file_id)
    assert sorted(r["custom_id"] for r in results) == ["e0", "e1", "e2"]
    assert all(r["response"]["body"]["object"] == "list" and r["response"]["body"]["data"][0]["embedding"] for r in results)


def test_a_file_over_the_limit_is_refused_with_413(sdk: openai.OpenAI) -> None:
    # just over: found while streaming it to the store; far over: refused by its announced length
    for size in (MAX_FILE_BYTES + 1, MAX_FILE_BYTES * 3):
        with pytest.raises(openai.APIStatusError) as refused:
            sdk.files.create(file=("big.jsonl", b"x" * size), purpose="batch")
        assert refused.value.status_code == 413
    assert sdk.files.create(file=("fits.jsonl", b"x" * MAX_FILE_BYTES), purpose="user_data").bytes == MAX_FILE_BYTES
