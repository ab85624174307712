"""Chat messages with tool calls and tool results --> what vLLM's chat template gets (serving.vllm_params)."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import InvalidRequest
from serving.vllm_params import chat_messages

CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}],
}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "sunny"}]}
USER = {"role": "user", "content": "Weather?"}


def test_tool_round_trip_is_shaped_for_the_template() -> None:
    user, called, result = chat_messages({"messages": [USER, CALLED, RESULT]})
    assert user == USER
    # Chat templates read arguments as an object, as vLLM's own server hands them over.
    assert called["tool_calls"] == [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]
    assert called["content"] is None
    assert result == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    # The request body itself is left as it came.
    assert CALLED["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'  # type: ignore[index]


@pytest.mark.parametrize(
    "message",
    [
        {"role": "tool", "content": "no id"},
        {"role": "tool", "tool_call_id": 7, "content": "bad id"},
        {**CALLED, "tool_calls": "weather()"},
        {**CALLED, "tool_calls": [{"function": {"name": "weather", "arguments": "{city"}}]},
    ],
)
def test_broken_tool_turns_are_a_400(message: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_messages({"messages": [USER, message]})
    assert caught.value.param == "messages[1]"
