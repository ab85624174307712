"""llama.cpp chat results and stream chunks --> the same with OpenAI ``tool_calls``.

llama-cpp-python writes the model's text as content; when the request forces a
call or the deployment reads Hermes-format calls, the text is read back here
(``serving.tool_call_text``), whole or chunk by chunk.
"""

from __future__ import annotations

from serving.base import JsonObject
from serving.tool_call_text import ToolOutput, tool_finish_reason


def with_tool_calls(result: JsonObject, tools: ToolOutput) -> JsonObject:
    """A whole chat completion whose text may hold tool calls."""
    choice = result["choices"][0]
    message, called = tools.message(choice["message"].get("content") or "")
    reason = choice.get("finish_reason")
    fixed = {**choice, "message": message, "finish_reason": tool_finish_reason(reason, called) if reason else reason}
    return {**result, "choices": [fixed]}


class ToolChunks:
    """Turns one stream's chat chunks into chunks whose deltas carry content and tool-call pieces."""

    def __init__(self, tools: ToolOutput) -> None:
        self._stream = tools.stream()

    def convert(self, chunk: JsonObject) -> list[JsonObject]:
        choice = chunk["choices"][0]
        delta = choice.get("delta") or {}
        reason = choice.get("finish_reason")
        converted: list[JsonObject] = []
        if "role" in delta:
            converted.append(_rechunk(chunk, {"role": delta["role"]}, None))
        pieces = [self._stream.feed(delta["content"], []) if delta.get("content") else None]
        if reason is not None:
            pieces.append(self._stream.finish())
        converted.extend(_rechunk(chunk, piece, None) for piece in pieces if piece is not None)
        if reason is not None:
            converted.append(_rechunk(chunk, {}, tool_finish_reason(reason, self._stream.called)))
        return converted


def _rechunk(chunk: JsonObject, delta: JsonObject, reason: str | None) -> JsonObject:
    choice = {**chunk["choices"][0], "delta": delta, "finish_reason": reason}
    return {**chunk, "choices": [choice]}
