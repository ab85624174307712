"""A plugin's streamed reply: one chunk, marked last, so that it goes out in one write with the stream's end."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from core.principal import Principal
from router.answers import LastChunk
from router.context import RequestContext
from router.plugin_reply import reply_stream


async def test_a_streamed_plugin_reply_is_one_last_chunk_ending_with_done() -> None:
    body = {"model": "alias", "messages": [{"role": "user", "content": "hi"}]}
    ctx = RequestContext("r1", SimpleNamespace(version=1), Principal(tenant="t", key_id="k"), "chat", "chat", "alias", body)  # type: ignore[arg-type]
    reply: dict[str, Any] = {"choices": [{"message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}]}
    chunks = [chunk async for chunk in reply_stream(ctx, reply)]
    assert len(chunks) == 1 and type(chunks[0]) is LastChunk
    assert b'"content":"hello"' in chunks[0] and chunks[0].endswith(b"data: [DONE]\n\n")
