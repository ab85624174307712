"""An upstream's own Files and Batches APIs (``batches: native``), against the fake upstream's (``bench.fake_batches``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from bench.fake_upstream import FakeUpstream, start_fake_upstream
from core.errors import UpstreamRejected, UpstreamUnavailable
from serving.azure import AzureOpenAIEngine, AzureOptions
from serving.base import EngineSpec
from serving.openai_batches import UpstreamBatches, batch_api
from serving.openai_http import OpenAIEngine, OpenAIOptions

LINE = {
    "custom_id": "a",
    "method": "POST",
    "url": "/v1/chat/completions",
    "body": {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]},
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    upstream = await start_fake_upstream(port=0)
    yield upstream
    await upstream.close()


def _openai(base_url: str, batches: str = "native") -> OpenAIEngine:
    options = OpenAIOptions(batches=batches, extra_headers={"x-fake-batch-delay-ms": "0"})  # type: ignore[arg-type]
    return OpenAIEngine(EngineSpec(name="up", provider="openai", model="fake-model", base_url=base_url, api_key="sk-up", options=options))


def _azure(base_url: str) -> AzureOpenAIEngine:
    options = AzureOptions(batches="native", deployment="my-dep", api_version="2024-10-21")
    return AzureOpenAIEngine(EngineSpec(name="az", provider="azure", model="gpt-4o", base_url=base_url, api_key="az-key", options=options))


def test_only_a_native_deployment_has_a_batch_api() -> None:
    assert batch_api(_openai("http://up/v1", "gateway")) is None
    assert batch_api(object()) is None
    api = batch_api(_openai("http://up/v1"))
    assert isinstance(api, UpstreamBatches) and api.model == "fake-model"
    assert api.endpoint("/v1/chat/completions") == "/v1/chat/completions"
    assert api.paths.url("/batches") == "http://up/v1/batches"


def test_azure_names_its_deployment_and_drops_the_v1() -> None:
    api = batch_api(_azure("https://res.openai.azure.com/"))
    assert api is not None and api.model == "my-dep"
    assert api.endpoint("/v1/embeddings") == "/embeddings"
    assert api.paths.url("/files") == "https://res.openai.azure.com/openai/files?api-version=2024-10-21"
    assert api.paths.url("/batches/b1/cancel") == "https://res.openai.azure.com/openai/batches/b1/cancel?api-version=2024-10-21"


async def _round_trip(fake: FakeUpstream, engine: OpenAIEngine, path_root: str, auth: tuple[str, str]) -> None:
    await engine.start()
    try:
        api = batch_api(engine)
        assert api is not None
        file_id = await api.upload(msgspec.json.encode(LINE) + b"\n", "in.jsonl")
        created = await api.create(file_id, api.endpoint("/v1/chat/completions"), {"sluicegate_batch_id": "batch_x"})
        assert created.status == "validating"
        for _ in range(50):
            batch = await api.retrieve(created.id)
            if batch.status == "completed":
                break
            await asyncio.sleep(0.02)
        assert batch.status == "completed" and batch.output_file_id is not None and batch.error_file_id is None
        assert batch.request_counts is not None and batch.request_counts.completed == 1
        [result] = [msgspec.json.decode(line) for line in (await api.content(batch.output_file_id)).splitlines()]
        assert result["custom_id"] == "a" and result["response"]["status_code"] == 200
        upload = next(r for r in fake.requests if r["path"] == f"{path_root}/files")
        assert upload["json"]["purpose"] == "batch" and upload["json"]["lines"] == [LINE]
        assert all(r["headers"].get(auth[0]) == auth[1] for r in fake.requests if "/batches" in r["path"] or "/files" in r["path"])
    finally:
        await engine.close()


async def test_upload_create_poll_and_download(fake: FakeUpstream) -> None:
    await _round_trip(fake, _openai(fake.url), "/v1", ("authorization", "Bearer sk-up"))


async def test_azure_round_trip(fake: FakeUpstream) -> None:
    await _round_trip(fake, _azure(f"http://{fake.host}:{fake.port}"), "/openai", ("api-key", "az-key"))
    assert all(r["query"].get("api-version") == "2024-10-21" for r in fake.requests if r["path"].startswith("/openai/"))


async def test_a_4xx_is_a_rejection_naming_the_status_and_a_5xx_is_retryable(fake: FakeUpstream) -> None:
    engine = _openai(fake.url)
    await engine.start()
    try:
        api = batch_api(engine)
        assert api is not None
        with pytest.raises(UpstreamRejected) as rejected:
            await api.create("file-unknown", "/v1/chat/completions", {})
        assert rejected.value.status == 400 and "400" in rejected.value.message and not rejected.value.retryable
        fake.set_behavior("error_503")
        with pytest.raises(UpstreamUnavailable) as down:
            await api.retrieve("batch_whatever")
        assert down.value.retryable
        fake.set_behavior("error_401")  # the deployment's key refused: a 4xx as any other, naming its status
        with pytest.raises(UpstreamRejected) as refused:
            await api.upload(b"{}\n", "in.jsonl")
        assert refused.value.status == 401
    finally:
        fake.set_behavior(None)
        await engine.close()
