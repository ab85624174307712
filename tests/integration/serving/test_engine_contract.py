"""One contract, every engine: the same assertions against each backend behind ``Engine``.

Routing never knows which engine serves a request, so every engine must give
back the same OpenAI shapes, usage, stream framing and errors. Flags on
``Backend`` mark only what a provider (or its fake) truly lacks; a missing
endpoint is itself part of the contract: it raises ``InvalidRequest``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest

from bench.fake_upstream import FakeUpstream
from core.errors import GatewayError, InvalidRequest
from serving.base import Engine, EngineRequest, Load, StreamChunk
from serving.sse import chunk_text
from serving.triton_openai import USAGE_ESTIMATED_HEADER
from tests.integration.serving import contract_backends as cb
from tests.integration.serving.contract_backends import Backend

pytestmark = pytest.mark.asyncio(loop_scope="session")

BACKENDS = [
    "openai",
    "openai_compatible",
    "azure",
    "anthropic",
    "triton",
    "triton_estimated",
    "llamacpp",
    "vllm",
]
# The backends above plus deployments that serve embeddings only.
EMBEDDERS = [*BACKENDS, "llamacpp_embedding", "vllm_embedding"]
FINISH_REASONS = {"stop", "length", "tool_calls", "content_filter", "function_call"}


# --- upstreams and engines, each started once -----------------------------------------


@pytest.fixture(scope="module")
async def fake_anthropic() -> AsyncIterator[Any]:
    from tests.fakes.anthropic_server import FakeAnthropic

    server = FakeAnthropic()
    await server.start()
    yield server
    await server.close()


@pytest.fixture(scope="module")
async def fake_triton() -> AsyncIterator[Any]:
    pytest.importorskip("tritonclient.grpc")
    from tests.fakes.triton_server import FakeTriton

    server = FakeTriton()
    await server.start()
    yield server
    await server.close()


async def _closing(*engines: Engine) -> None:
    for engine in engines:
        await engine.close()


@pytest.fixture(scope="module")
async def openai_backend(fake_upstream: FakeUpstream) -> AsyncIterator[Backend]:
    backend = await cb.openai_backend(fake_upstream.url)
    yield backend
    await _closing(backend.engine)


@pytest.fixture(scope="module")
async def openai_compatible_backend(fake_upstream: FakeUpstream) -> AsyncIterator[Backend]:
    backend = await cb.openai_compatible_backend(fake_upstream.url)
    yield backend
    await _closing(backend.engine)


@pytest.fixture(scope="module")
async def azure_backend(fake_upstream: FakeUpstream) -> AsyncIterator[Backend]:
    backend = await cb.azure_backend(fake_upstream.url.removesuffix("/v1"))
    yield backend
    await _closing(backend.engine)


@pytest.fixture(scope="module")
async def anthropic_backend(fake_anthropic: Any) -> AsyncIterator[Backend]:
    backend = await cb.anthropic_backend(fake_anthropic.base_url, fake_anthropic.api_key)
    yield backend
    await _closing(backend.engine)


@pytest.fixture(scope="module")
async def triton_backend(fake_triton: Any) -> AsyncIterator[Backend]:
    backend, missing = await cb.triton_backend(fake_triton.target, estimate=False)
    yield backend
    await _closing(backend.engine, missing)


@pytest.fixture(scope="module")
async def triton_estimated_backend(fake_triton: Any) -> AsyncIterator[Backend]:
    backend, missing = await cb.triton_backend(fake_triton.target, estimate=True)
    yield backend
    await _closing(backend.engine, missing)


@pytest.fixture(scope="module")
async def llamacpp_backend() -> AsyncIterator[Backend]:
    pytest.importorskip("llama_cpp")
    backend = await cb.llamacpp_backend()
    yield backend
    await _closing(backend.engine)


@pytest.fixture(scope="module")
def vllm_backend(vllm_engine: Engine) -> Backend:
    from tests.integration.serving.conftest import TINY_MODEL

    # The session's one vLLM engine; its own fixture closes it.
    return cb.vllm_backend(vllm_engine, TINY_MODEL)


@pytest.fixture(scope="module")
async def llamacpp_embedding_backend() -> AsyncIterator[Backend]:
    pytest.importorskip("llama_cpp")
    backend = await cb.llamacpp_embedding_backend()
    yield backend
    await _closing(backend.engine)


@pytest.fixture(scope="module")
def vllm_embedding_backend(vllm_embedder: Engine) -> Backend:
    from tests.integration.serving.conftest import TINY_EMBEDDER

    # The session's vLLM embedding engine; its own fixture closes it.
    return cb.vllm_embedding_backend(vllm_embedder, TINY_EMBEDDER)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    # Looked up by name so that selecting some backends (-k) starts only those.
    chosen: Backend = request.getfixturevalue(f"{request.param}_backend")
    return chosen


@pytest.fixture(scope="module", params=EMBEDDERS)
def embedder(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.getfixturevalue(f"{request.param}_backend")
    return chosen


# --- helpers ----------------------------------------------------------------------------


async def collect(engine: Engine, request: EngineRequest) -> list[StreamChunk]:
    """The stream's chunks, each with its text and finish reason read as the gateway reads them."""
    chunks = [chunk async for chunk in engine.stream(request)]
    for chunk in chunks:
        # Relayed chunks may defer decoding; this fills in text and finish_reason.
        chunk_text(chunk)
    return chunks


def check_usage(usage: dict[str, Any]) -> None:
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def check_stream_framing(chunks: list[StreamChunk], text_of: Any) -> list[dict[str, Any]]:
    """What every stream shares, chat or completion; gives back the decoded payloads."""
    payloads = [json.loads(chunk.data) for chunk in chunks]
    *body, last = chunks
    assert last.usage_only and last.usage is not None
    assert payloads[-1]["choices"] == []
    check_usage(payloads[-1]["usage"])
    assert payloads[-1]["usage"]["completion_tokens"] == last.usage.completion_tokens
    assert payloads[-1]["usage"]["prompt_tokens"] == last.usage.prompt_tokens
    assert not any(chunk.usage_only for chunk in body)
    for chunk, payload in zip(body, payloads, strict=False):
        assert len(payload["choices"]) == 1
        assert chunk.text == text_of(payload["choices"][0])
        assert chunk.finish_reason == payload["choices"][0].get("finish_reason")
    finishing = [chunk.finish_reason for chunk in body if chunk.finish_reason is not None]
    assert len(finishing) == 1 and finishing[0] in FINISH_REASONS
    return payloads


def delta_text(choice: dict[str, Any]) -> str:
    return choice["delta"].get("content") or ""


async def wait_idle(engine: Engine, timeout: float = 5.0) -> Load:
    deadline = asyncio.get_running_loop().time() + timeout
    while (load := engine.load()).running and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return load


# --- 1, 2: chat ---------------------------------------------------------------------------


async def test_generate_chat(backend: Backend) -> None:
    result = await backend.engine.generate(backend.chat())
    body = json.loads(result.body)
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in FINISH_REASONS
    check_usage(body["usage"])
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (
        body["usage"]["prompt_tokens"],
        body["usage"]["completion_tokens"],
    )
    # An engine that only estimates token counts says so.
    assert (USAGE_ESTIMATED_HEADER in result.headers) is not backend.exact_usage


async def test_stream_chat(backend: Backend) -> None:
    chunks = await collect(backend.engine, backend.chat(stream=True))
    payloads = check_stream_framing(chunks, delta_text)
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    roles = [p["choices"][0]["delta"].get("role") for p in payloads[:-1]]
    assert roles[0] == "assistant" and set(roles[1:]) <= {None, "assistant"}
    assert "".join(delta_text(p["choices"][0]) for p in payloads[:-1])
    assert "".join(chunk_text(chunk) for chunk in chunks)


async def test_stream_and_generate_count_alike(backend: Backend) -> None:
    whole = await backend.engine.generate(backend.chat())
    chunks = await collect(backend.engine, backend.chat(stream=True))
    assert whole.usage is not None and chunks[-1].usage is not None
    if backend.exact_usage:
        # Greedy decoding: the same request costs the same, streamed or not.
        assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    else:
        assert chunks[-1].usage.total_tokens > 0


# --- 3: max_tokens ------------------------------------------------------------------------


async def test_max_tokens_caps_the_answer(backend: Backend) -> None:
    if not backend.honours_max_tokens:
        pytest.skip(f"the {backend.name} upstream fake does not model max_tokens")
    result = await backend.engine.generate(backend.chat(max_tokens=2))
    choice = json.loads(result.body)["choices"][0]
    chunks = await collect(backend.engine, backend.chat(stream=True, max_tokens=2))
    streamed = [chunk.finish_reason for chunk in chunks if chunk.finish_reason]
    for finish, usage in ((choice["finish_reason"], result.usage), (streamed[0], chunks[-1].usage)):
        assert usage is not None
        assert finish in ("length", "stop")
        if backend.exact_usage:
            assert usage.completion_tokens <= 2
            assert finish == "stop" or usage.completion_tokens == 2


# --- 4, 5: early close, load and health ---------------------------------------------------


async def test_early_close_frees_the_engine(backend: Backend) -> None:
    engine = backend.engine
    stream = engine.stream(backend.chat(stream=True, max_tokens=200))
    # The router stops a stream whose client went away by closing it.
    assert isinstance(stream, AsyncGenerator)
    first = await anext(stream)
    json.loads(first.data)
    await stream.aclose()
    load = await wait_idle(engine)
    assert load.running == 0
    # The abandoned request holds nothing: the next one is served at once.
    result = await asyncio.wait_for(engine.generate(backend.chat(max_tokens=4)), timeout=10)
    assert json.loads(result.body)["choices"]
    assert (await wait_idle(engine)).running == 0
    assert await engine.health()


async def test_load_and_health(backend: Backend) -> None:
    assert isinstance(backend.engine, Engine)
    assert await backend.engine.health()
    load = backend.engine.load()
    assert isinstance(load, Load)
    assert isinstance(load.running, int) and isinstance(load.waiting, int)
    assert load.running >= 0 and load.waiting >= 0


# --- 6, 7: completions and embeddings -------------------------------------------------------


async def test_text_completion(backend: Backend) -> None:
    if not backend.supports_completions:
        with pytest.raises(InvalidRequest):
            await backend.engine.generate(backend.completion())
        with pytest.raises(InvalidRequest):
            await collect(backend.engine, backend.completion(stream=True))
        return
    result = await backend.engine.generate(backend.completion())
    body = json.loads(result.body)
    assert body["object"] == "text_completion"
    choice = body["choices"][0]
    assert isinstance(choice["text"], str) and choice["text"]
    assert choice["finish_reason"] in FINISH_REASONS
    check_usage(body["usage"])
    assert result.usage is not None and result.usage.total_tokens == body["usage"]["total_tokens"]

    chunks = await collect(backend.engine, backend.completion(stream=True))
    payloads = check_stream_framing(chunks, lambda c: c.get("text") or "")
    assert all(p["object"] == "text_completion" for p in payloads)
    assert "".join(chunk_text(chunk) for chunk in chunks)


async def test_embeddings(embedder: Backend) -> None:
    inputs = ["hello world", "bonjour"]
    if not embedder.supports_embeddings:
        with pytest.raises(InvalidRequest):
            await embedder.engine.embed(embedder.embedding(inputs))
        return
    result = await embedder.engine.embed(embedder.embedding(inputs))
    body = json.loads(result.body)
    assert body["object"] == "list"
    assert [item["index"] for item in body["data"]] == [0, 1]
    for item in body["data"]:
        assert item["object"] == "embedding"
        vector = item["embedding"]
        assert vector and all(isinstance(x, float) for x in vector)
    assert len(body["data"][0]["embedding"]) == len(body["data"][1]["embedding"])
    assert body["usage"]["prompt_tokens"] > 0
    assert result.usage is not None and result.usage.prompt_tokens > 0


@pytest.mark.parametrize("name", [name for name in EMBEDDERS if name not in BACKENDS])
async def test_embedding_only_deployments_refuse_generation(request: pytest.FixtureRequest, name: str) -> None:
    embedder: Backend = request.getfixturevalue(f"{name}_backend")
    assert not embedder.serves_generation
    for call in (embedder.chat(), embedder.completion()):
        with pytest.raises(InvalidRequest):
            await embedder.engine.generate(call)
    with pytest.raises(InvalidRequest):
        await collect(embedder.engine, embedder.chat(stream=True))
    assert await embedder.engine.health()


# --- 8: refusals ------------------------------------------------------------------------------


async def _refusal(engine: Engine, request: EngineRequest, *, stream: bool) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        if stream:
            await collect(engine, request)
        else:
            await engine.generate(request)
    error = caught.value
    assert 400 <= error.status < 500
    # Error messages never quote the prompt.
    assert cb.QUESTION not in error.message and cb.SYSTEM not in error.message
    return error


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_unknown_model_is_a_gateway_error(backend: Backend, stream: bool) -> None:
    if backend.rejecting is None:
        pytest.skip(f"{backend.name} serves the model it loaded whatever the body names")
    engine, model = backend.rejecting
    await _refusal(engine, backend.chat(stream=stream, model=model), stream=stream)
    assert (await wait_idle(engine)).running == 0


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_malformed_messages_are_a_client_error(backend: Backend, stream: bool) -> None:
    await _refusal(backend.engine, backend.chat(stream=stream, messages=cb.QUESTION), stream=stream)
    assert (await wait_idle(backend.engine)).running == 0
    assert await backend.engine.health()


# --- what reaches the wire, for the providers that share the fake upstream ---------------------


@pytest.mark.parametrize("kind", ["chat", "completion", "embedding"])
async def test_azure_deployment_url_and_key(azure_backend: Backend, fake_upstream: FakeUpstream, kind: str) -> None:
    requests = {
        "chat": azure_backend.chat(),
        "completion": azure_backend.completion(),
        "embedding": azure_backend.embedding(["hello"]),
    }
    call = azure_backend.engine.embed if kind == "embedding" else azure_backend.engine.generate
    await call(requests[kind])
    sent = fake_upstream.requests[-1]
    path = {"chat": "chat/completions", "completion": "completions", "embedding": "embeddings"}[kind]
    assert sent["path"] == f"/openai/deployments/{cb.AZURE_DEPLOYMENT}/{path}"
    assert sent["query"] == {"api-version": cb.AZURE_API_VERSION}
    assert sent["headers"]["api-key"] == cb.AZURE_KEY
    assert "authorization" not in sent["headers"]


async def test_openai_credentials_reach_the_upstream(
    openai_backend: Backend, openai_compatible_backend: Backend, fake_upstream: FakeUpstream
) -> None:
    await openai_backend.engine.generate(openai_backend.chat())
    sent = fake_upstream.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["query"] == {}
    assert sent["headers"]["authorization"] == f"Bearer {cb.OPENAI_KEY}"
    assert sent["headers"]["openai-organization"] == "org-contract"
    await openai_compatible_backend.engine.generate(openai_compatible_backend.chat())
    sent = fake_upstream.requests[-1]
    assert "authorization" not in sent["headers"] and "api-key" not in sent["headers"]
