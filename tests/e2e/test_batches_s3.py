"""The Files and Batches APIs through the unmodified OpenAI SDK on production state: S3 files, PostgreSQL batches.

A gateway subprocess keeps files in a bucket of moto's S3 server and batch
records in a throwaway PostgreSQL database; the SDK uploads, runs a batch,
pages, downloads and deletes as against OpenAI.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import msgspec
import openai
import pytest

from router.auth import hash_api_key
from tests.e2e.conftest import Process, free_port, gateway_config, spawn
from tests.fakes.s3_server import S3Server, start_s3_server

ADMIN_DSN = os.environ.get("SLUICEGATE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
OWNER_KEY = "sk-e2e-s3-owner-" + secrets.token_hex(12)
OTHER_KEY = "sk-e2e-s3-other-" + secrets.token_hex(12)
TERMINAL = {"completed", "failed", "cancelled", "expired"}


async def _database(sql: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def s3_gateway(tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[tuple[Process, S3Server]]:
    database = f"sg_e2e_s3_{secrets.token_hex(6)}"
    try:
        asyncio.run(_database(f"CREATE DATABASE {database}"))
    except (OSError, asyncpg.PostgresError):
        pytest.skip("PostgreSQL is not reachable")
    workdir = tmp_path_factory.mktemp("batches-s3")
    server = start_s3_server(workdir / "moto.log")
    settings = gateway_config(fake_server.url + "/v1")
    settings["tenants"] = [
        {"id": "owner", "keys": [{"id": "owner-key", "hash": hash_api_key(OWNER_KEY)}]},
        {"id": "other", "keys": [{"id": "other-key", "hash": hash_api_key(OTHER_KEY)}]},
    ]
    settings["state"] = {
        "files": "s3", "s3": server.state(prefix="e2e"), "batches": "postgres",
        "postgres_dsn": f"{ADMIN_DSN.rsplit('/', 1)[0]}/{database}",
    }  # fmt: skip
    settings["batches"] = {"poll_interval_s": 0.2, "max_concurrent": 4}
    config = workdir / "sluicegate.yaml"
    config.write_bytes(msgspec.yaml.encode(settings))
    port = free_port()
    args = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLUICEGATE_TEST_S3_SECRET", server.secret_access_key)
            proc = spawn(args, workdir / "gateway.log", f"http://127.0.0.1:{port}", "/healthz")
        yield proc, server
        proc.stop()
        assert server.secret_access_key not in proc.output()
    finally:
        server.stop()
        asyncio.run(_database(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))


@pytest.fixture(scope="module")
def sdk(s3_gateway: tuple[Process, S3Server]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=s3_gateway[0].url + "/v1", api_key=OWNER_KEY, max_retries=0, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def other(s3_gateway: tuple[Process, S3Server]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=s3_gateway[0].url + "/v1", api_key=OTHER_KEY, max_retries=0, timeout=30.0) as client:
        yield client


def _jsonl(n: int, model: str) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hello please"}]}
    return b"".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}).encode() + b"\n" for i in range(n)
    )


def _wait(sdk: openai.OpenAI, batch_id: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = sdk.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout_s}s")


def test_a_batch_runs_with_its_files_in_s3(sdk: openai.OpenAI, other: openai.OpenAI, s3_gateway: tuple[Process, S3Server]) -> None:
    uploaded = sdk.files.create(file=("requests.jsonl", _jsonl(40, "fake-model")), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = _wait(sdk, batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and (batch.request_counts.completed, batch.request_counts.failed) == (40, 0)
    results = [json.loads(line) for line in sdk.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(40))
    # usage and model, as the SDK parses OpenAI's Batch object
    prompt = sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in results)
    completion = sum(r["response"]["body"]["usage"]["completion_tokens"] for r in results)
    assert batch.model == "fake-model" and batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens, batch.usage.total_tokens) == (prompt, completion, prompt + completion)
    assert batch.usage.input_tokens_details.cached_tokens == 0
    # another tenant sees neither the batch nor its files
    for missing in (lambda: other.batches.retrieve(batch.id), lambda: other.files.retrieve(batch.output_file_id)):
        with pytest.raises(openai.NotFoundError):
            missing()
    _, server = s3_gateway
    assert any(key.startswith("e2e/files/") and key.endswith(f"{batch.output_file_id}.json") for key in server.keys("e2e/"))


def test_a_large_file_streams_up_and_down_and_pages_and_deletes(sdk: openai.OpenAI) -> None:
    data = os.urandom(3 * 1024 * 1024)
    made = [sdk.files.create(file=(f"f{i}.bin", data if i == 0 else b"x"), purpose="user_data") for i in range(3)]
    assert made[0].bytes == len(data)
    assert hashlib.sha256(sdk.files.content(made[0].id).content).digest() == hashlib.sha256(data).digest()
    ids = [f.id for f in made]
    listed = [f.id for f in sdk.files.list(purpose="user_data", limit=2, order="asc")]  # the SDK follows `after` itself
    assert [i for i in listed if i in ids] == ids
    sdk.files.delete(made[0].id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(made[0].id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.content(made[0].id)
