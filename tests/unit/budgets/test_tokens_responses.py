"""Token estimates of a Responses API body (kind ``responses``), as for a chat body's messages."""

from __future__ import annotations

from budgets.tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE, completion_budget, request_texts

TOOLS = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]


def test_instructions_items_and_tools_count_as_chat_messages_do() -> None:
    body = {
        "instructions": "Be brief.",
        "input": [
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather?"}, {"type": "input_image", "image_url": "u"}],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Think."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
        ],
        "tools": TOOLS,
    }  # fmt: skip
    texts, overhead = request_texts("responses", body)
    assert texts == [
        "Be brief.", "Weather?", "Checking.", "Think.", 'get_weather{"city":"Paris"}', "Sunny",
        '[{"type":"function","name":"get_weather","parameters":{"type":"object"}}]',
    ]  # fmt: skip
    assert overhead == REPLY_PRIMING + TOKENS_PER_MESSAGE * (1 + 5)
    assert request_texts("responses", {"input": "hello there"}) == (["hello there"], REPLY_PRIMING + TOKENS_PER_MESSAGE)


def test_max_output_tokens_bounds_the_completion() -> None:
    assert completion_budget({"max_output_tokens": 40}, 4096) == 40
    assert completion_budget({}, 4096) == 4096
