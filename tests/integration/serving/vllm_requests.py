"""Requests and waits shared by the vLLM engine tests."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from serving.base import EngineRequest, Load, StreamChunk
from serving.vllm_engine import VLLMEngine
from tests.integration.serving.conftest import TINY_MODEL

QUESTION = [{"role": "user", "content": "Hello, how are you today?"}]


def engine_request(kind: str, tenant: str = "acme", **body: Any) -> EngineRequest:
    full = {"model": TINY_MODEL, **body}
    return EngineRequest(kind=kind, body=full, request_id=uuid.uuid4().hex, tenant=tenant)  # type: ignore[arg-type]


def chat_request(tenant: str = "acme", **body: Any) -> EngineRequest:
    return engine_request("chat", tenant, messages=body.pop("messages", QUESTION), **body)


def completion_request(prompt: Any, tenant: str = "acme", **body: Any) -> EngineRequest:
    return engine_request("completion", tenant, prompt=prompt, **body)


async def collect_chunks(stream: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


def decode_chunks(chunks: list[StreamChunk]) -> list[dict[str, Any]]:
    return [json.loads(chunk.data) for chunk in chunks]


def template_len(tokenizer: Any, messages: list[dict[str, Any]], tools: Any = None) -> int:
    ids = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return len(ids)


async def wait_idle(engine: VLLMEngine, timeout: float = 5.0) -> Load:
    deadline = asyncio.get_running_loop().time() + timeout
    while (load := engine.load()) != Load() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    return load


async def wait_busy(engine: VLLMEngine, timeout: float = 10.0) -> Load:
    deadline = asyncio.get_running_loop().time() + timeout
    while (load := engine.load()) == Load() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return load
