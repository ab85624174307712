"""Every client API on every engine kind: the unmodified openai and anthropic SDKs against one gateway.

One gateway serves five aliases, one per engine kind: the in-process vLLM tiny
model (random weights: only what constrained decoding guarantees can be
asserted of its text), llama.cpp with SmolLM2, and the fake OpenAI, Anthropic
and Gemini upstreams (the Gemini fake refuses a request shape the real API
would refuse). Each test runs once per alias: Responses (plain, streamed,
function tools with ``previous_response_id``, ``parse``), chat ``parse`` and a
tool round trip streamed and not, and Anthropic Messages (create, stream,
tools, ``count_tokens``).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import anthropic
import httpx
import msgspec
import openai
import pydantic
import pytest

from router.auth import hash_api_key
from tests.e2e.conftest import UPSTREAM_KEY, UPSTREAM_KEY_ENV, Process, free_port, spawn
from tests.fakes import anthropic_server, gemini_server

pytest.importorskip("vllm", reason="the vLLM engine needs scripts/install.sh")
pytest.importorskip("llama_cpp", reason="the llama.cpp engine needs scripts/install.sh")

ENGINES = ["vllm", "llamacpp", "openai", "anthropic", "gemini"]
API_KEY = "sk-matrix-" + secrets.token_hex(12)
ANTHROPIC_KEY_ENV = "SLUICEGATE_E2E_ANTHROPIC_KEY"
GEMINI_KEY_ENV = "SLUICEGATE_E2E_GEMINI_KEY"
START_TIMEOUT_S = 300.0
SDK_TIMEOUT_S = 120.0


class Forecast(pydantic.BaseModel):
    """Every string bounded, so that even random weights close the JSON within the token budget."""

    city: Annotated[str, pydantic.Field(max_length=12)]
    unit: Literal["celsius", "fahrenheit"]
    sunny: bool


WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
CHAT_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast", "parameters": WEATHER_PARAMETERS}}
]
RESPONSES_TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "description": "Weather forecast", "parameters": WEATHER_PARAMETERS, "strict": True}
]
ANTHROPIC_TOOLS: list[Any] = [{"name": "get_weather", "description": "Weather forecast", "input_schema": WEATHER_PARAMETERS}]


def valid_weather_arguments(arguments: object) -> dict[str, Any]:
    """The call's arguments, checked against WEATHER_PARAMETERS."""
    value = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert isinstance(value, dict) and set(value) == {"city", "unit"}, value
    assert isinstance(value["city"], str) and len(value["city"]) <= 12, value
    assert value["unit"] in ("celsius", "fahrenheit"), value
    return value


# --- the fakes the cloud engines call, served from a thread of their own ---------------------------


class ThreadFakes:
    """The Anthropic and Gemini fakes (aiohttp apps) on an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.anthropic = anthropic_server.FakeAnthropic()
        self.gemini = gemini_server.FakeGemini()
        self._run(self.anthropic.start())
        self._run(self.gemini.start())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self._run(self.anthropic.close())
        self._run(self.gemini.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@dataclass
class Matrix:
    gateway: Process
    fakes: ThreadFakes
    openai_fake: Process

    def upstream_saw(self, engine: str, marker: str) -> bool | None:
        """Whether the engine's upstream was sent ``marker``; None for in-process engines (no wire to look at)."""
        if engine == "openai":
            recorded = httpx.get(self.openai_fake.url + "/_fake/requests", timeout=5.0).json()
            return any(marker in json.dumps(r) for r in recorded)
        if engine == "anthropic":
            return any(marker in json.dumps(r.body) for r in self.fakes.anthropic.requests)
        if engine == "gemini":
            return any(marker in json.dumps(r.body) for r in self.fakes.gemini.requests)
        return None


def matrix_config(tiny_dir: Path, openai_url: str, fakes: ThreadFakes) -> dict[str, Any]:
    from serving.llamacpp import default_model_path

    vllm_options = {
        "model_path": str(tiny_dir),
        "dtype": "float32",
        "max_model_len": 512,
        "kv_cache_space_gib": 0.25,
        "enforce_eager": True,
        "max_num_seqs": 4,
        "seed": 0,
        "tool_parser": "hermes",
        "compact_json": True,
    }
    deployments = [
        {"name": "d-vllm", "provider": "vllm", "model": "tiny-llama", "privacy": "self_hosted", "options": vllm_options},
        {
            "name": "d-llamacpp",
            "provider": "llamacpp",
            "model": "SmolLM2-135M-Instruct",
            "privacy": "self_hosted",
            "options": {"model_path": default_model_path(), "seed": 0, "n_ctx": 2048},
        },
        {"name": "d-openai", "provider": "openai", "base_url": openai_url, "model": "fake-normal", "api_key": {"env": UPSTREAM_KEY_ENV}},
        {
            "name": "d-anthropic",
            "provider": "anthropic",
            "base_url": fakes.anthropic.base_url,
            "model": "claude-text",
            "api_key": {"env": ANTHROPIC_KEY_ENV},
        },
        {
            "name": "d-gemini",
            "provider": "gemini",
            "base_url": fakes.gemini.base_url,
            "model": "gemini-2.5-flash",
            "api_key": {"env": GEMINI_KEY_ENV},
        },
    ]
    return {
        "server": {"host": "127.0.0.1"},
        "resilience": {"max_attempts": 1},
        "deployments": deployments,
        "models": [{"alias": f"on-{engine}", "deployments": [f"d-{engine}"]} for engine in ENGINES],
        "tenants": [{"id": "matrix", "keys": [{"id": "matrix-key", "hash": hash_api_key(API_KEY)}]}],
    }


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory, fake_server: Process) -> Iterator[Matrix]:
    from bench.tiny_model import build_tiny_llama

    tiny_dir = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    fakes = ThreadFakes()
    workdir = tmp_path_factory.mktemp("matrix")
    config = workdir / "sluicegate.yaml"
    config.write_bytes(msgspec.yaml.encode(matrix_config(tiny_dir, fake_server.url + "/v1", fakes)))
    os.environ.update(
        {
            ANTHROPIC_KEY_ENV: anthropic_server.API_KEY,
            GEMINI_KEY_ENV: gemini_server.API_KEY,
            UPSTREAM_KEY_ENV: UPSTREAM_KEY,
            # vLLM: nothing fetched, nothing reported, the worker inside the engine-core process.
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        }
    )
    port = free_port()
    args = [sys.executable, "-m", "router", "serve", "--config", str(config), "--port", str(port)]
    gateway = spawn(args, workdir / "gateway.log", f"http://127.0.0.1:{port}", "/healthz", start_timeout_s=START_TIMEOUT_S)
    try:
        wait_ready(gateway)
        yield Matrix(gateway, fakes, fake_server)
    finally:
        gateway.stop()
        fakes.close()


def wait_ready(gateway: Process) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if gateway.popen.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{gateway.output()[-4000:]}")
        if httpx.get(gateway.url + "/readyz", timeout=5.0).status_code == 200:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the gateway was not ready within {START_TIMEOUT_S}s:\n{gateway.output()[-4000:]}")


@pytest.fixture(scope="module")
def oai(matrix: Matrix) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=matrix.gateway.url + "/v1", api_key=API_KEY, max_retries=0, timeout=SDK_TIMEOUT_S) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def claude(matrix: Matrix) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=matrix.gateway.url, api_key=API_KEY, max_retries=0, timeout=SDK_TIMEOUT_S) as sdk:
        yield sdk


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def marker() -> str:
    return f"m{secrets.token_hex(5)}"



def prompt_reached(matrix: Matrix, engine: str, tag: str, before: int, after: int) -> None:
    """A later turn's tool result reached the engine: seen on the wire, or (in-process) a longer prompt."""
    saw = matrix.upstream_saw(engine, tag)
    if saw is None:
        assert after > before, (before, after)
    else:
        assert saw, f"{engine}: the tool result {tag} never reached the upstream"


# --- Responses ------------------------------------------------------------------------------------


def test_responses_create(oai: openai.OpenAI, engine: str) -> None:
    response = oai.responses.create(model=f"on-{engine}", input="Say hello.", max_output_tokens=16)
    assert response.id.startswith("resp_") and response.model == f"on-{engine}"
    assert response.status in ("completed", "incomplete")
    assert [item.type for item in response.output] == ["message"]
    assert response.usage is not None and response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 16
    assert oai.responses.retrieve(response.id).output_text == response.output_text


def test_responses_stream(oai: openai.OpenAI, engine: str) -> None:
    with oai.responses.stream(model=f"on-{engine}", input="Say hello.", max_output_tokens=16) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    # The SDK's get_final_response() wants response.completed; a reply cut at max_output_tokens ends incomplete.
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    final = last.response
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert final.output_text == text
    assert final.usage is not None and 0 < final.usage.output_tokens <= 16


def test_responses_function_call_and_previous_response_id(matrix: Matrix, oai: openai.OpenAI, engine: str) -> None:
    first = oai.responses.create(
        model=f"on-{engine}",
        input="What is the weather in Paris?",
        tools=RESPONSES_TOOLS,
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=200,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather", first.output
    valid_weather_arguments(calls[0].arguments)
    tag = marker()
    second = oai.responses.create(
        model=f"on-{engine}",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": f"Sunny, 24C {tag}"}],
        tools=RESPONSES_TOOLS,
        tool_choice="none",
        max_output_tokens=16,
    )
    assert [item.type for item in second.output] == ["message"]
    assert first.usage is not None and second.usage is not None
    prompt_reached(matrix, engine, tag, first.usage.input_tokens, second.usage.input_tokens)
    items = oai.responses.input_items.list(second.id, order="asc").data
    assert [item.type for item in items][-1] == "function_call_output"


def test_responses_parse(oai: openai.OpenAI, engine: str) -> None:
    parsed = oai.responses.parse(
        model=f"on-{engine}", input="The weather in Paris, as JSON.", text_format=Forecast, max_output_tokens=200
    )
    assert isinstance(parsed.output_parsed, Forecast), parsed.output_text


# --- Chat completions -----------------------------------------------------------------------------


def test_chat_parse(oai: openai.OpenAI, engine: str) -> None:
    completion = oai.chat.completions.parse(
        model=f"on-{engine}",
        messages=[{"role": "user", "content": "The weather in Paris, as JSON."}],
        response_format=Forecast,
        max_tokens=200,
    )
    assert isinstance(completion.choices[0].message.parsed, Forecast), completion.choices[0].message.content


def _streamed_call(oai: openai.OpenAI, engine: str, messages: list[Any]) -> tuple[str, str, str | None]:
    """One forced call, streamed: its id, its arguments put together from the deltas, and the finish reason."""
    call_id, arguments, finish = "", "", None
    stream = oai.chat.completions.create(
        model=f"on-{engine}",
        messages=messages,
        tools=CHAT_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
        stream=True,
    )
    for chunk in stream:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or ():
            call_id = delta.id or call_id
            arguments += (delta.function.arguments or "") if delta.function else ""
        finish = chunk.choices[0].finish_reason or finish
    return call_id, arguments, finish


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_chat_tool_round_trip(matrix: Matrix, oai: openai.OpenAI, engine: str, stream: bool) -> None:
    question: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        call_id, arguments, finish = _streamed_call(oai, engine, question)
        prompt_before = 0
    else:
        first = oai.chat.completions.create(
            model=f"on-{engine}",
            messages=question,
            tools=CHAT_TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=200,
        )
        [call] = first.choices[0].message.tool_calls or []
        assert call.type == "function"
        call_id, arguments, finish = call.id, call.function.arguments, first.choices[0].finish_reason
        assert call.function.name == "get_weather"
        prompt_before = first.usage.prompt_tokens if first.usage else 0
    assert finish == "tool_calls" and call_id
    valid_weather_arguments(arguments)
    tag = marker()
    turns = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}},
        ]},
        {"role": "tool", "tool_call_id": call_id, "content": f"Sunny, 24C {tag}"},
    ]  # fmt: skip
    second = oai.chat.completions.create(model=f"on-{engine}", messages=turns, tools=CHAT_TOOLS, tool_choice="none", max_tokens=16)
    assert second.choices[0].finish_reason in ("stop", "length")
    assert second.choices[0].message.tool_calls in (None, [])
    assert second.usage is not None
    prompt_reached(matrix, engine, tag, prompt_before, second.usage.prompt_tokens)


# --- Anthropic Messages ---------------------------------------------------------------------------


def test_messages_create(claude: anthropic.Anthropic, engine: str) -> None:
    message = claude.messages.create(
        model=f"on-{engine}", max_tokens=16, system="Be brief.", messages=[{"role": "user", "content": "Say hello."}]
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in message.content] == ["text"]
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 16


def test_messages_stream(claude: anthropic.Anthropic, engine: str) -> None:
    with claude.messages.stream(model=f"on-{engine}", max_tokens=16, messages=[{"role": "user", "content": "Say hello."}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_messages_tool_round_trip(matrix: Matrix, claude: anthropic.Anthropic, engine: str) -> None:
    question: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = claude.messages.create(
        model=f"on-{engine}",
        max_tokens=200,
        messages=question,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather"
    valid_weather_arguments(call.input)
    tag = marker()
    turns: list[Any] = [
        *question,
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": f"Sunny, 24C {tag}"}]},
    ]
    second = claude.messages.create(
        model=f"on-{engine}", max_tokens=16, messages=turns, tools=ANTHROPIC_TOOLS, tool_choice={"type": "none"}
    )
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [block.type for block in second.content] == ["text"]
    prompt_reached(matrix, engine, tag, first.usage.input_tokens, second.usage.input_tokens)


def test_count_tokens(claude: anthropic.Anthropic, engine: str) -> None:
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    bare = claude.messages.count_tokens(model=f"on-{engine}", messages=messages)
    with_tools = claude.messages.count_tokens(model=f"on-{engine}", messages=messages, tools=ANTHROPIC_TOOLS)
    assert 0 < bare.input_tokens < with_tools.input_tokens
