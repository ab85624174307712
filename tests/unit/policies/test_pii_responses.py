"""PII in a Responses API body (kind ``responses``): every text it sends is found, and redaction keeps its shape."""

from __future__ import annotations

from typing import Any

import msgspec

from policies.pii import PiiPolicy, scan_request
from policies.pii_fields import responses_strings

EMAIL = "jane.doe@example.org"


def body() -> dict[str, Any]:
    return {
        "model": "m",
        "instructions": "Be brief.",
        "input": [
            {"type": "message", "role": "user",
             "content": [{"type": "input_text", "text": "Weather?"}, {"type": "input_image", "image_url": "https://x"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Think."}], "encrypted_content": "enc"},
            {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "paris weather"}},
            {"type": "file_search_call", "id": "fs_1", "queries": ["q1"], "results": [{"file_id": "f", "text": "r1"}]},
            {"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
        ],
        "tools": [
            {"type": "function", "name": "get_weather", "description": "fd",
             "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "pd"}}}},
            {"type": "web_search", "user_location": {"type": "approximate", "city": "Paris", "country": "FR"}},
        ],
        "text": {"format": {"type": "json_schema", "name": "w", "description": "sd", "schema": {"type": "object", "title": "st"}}},
    }  # fmt: skip


def test_every_text_of_a_responses_body_is_found_with_its_path() -> None:
    assert list(responses_strings(body())) == [
        (("instructions",), "Be brief.", False),
        (("input", 0, "content", 0, "text"), "Weather?", False),
        (("input", 1, "content", 0, "text"), "Checking.", False),
        (("input", 2, "summary", 0, "text"), "Think.", False),
        (("input", 3, "action", "query"), "paris weather", False),
        (("input", 4, "queries", 0), "q1", False),
        (("input", 4, "results", 0, "text"), "r1", False),
        (("input", 5, "arguments"), '{"city": "Paris"}', True),
        (("input", 6, "output"), "Sunny", False),
        (("tools", 0, "description"), "fd", False),
        (("tools", 0, "parameters", "properties", "city", "description"), "pd", False),
        (("tools", 1, "user_location", "city"), "Paris", False),
        (("text", "format", "description"), "sd", False),
        (("text", "format", "schema", "title"), "st", False),
    ]


async def test_redaction_replaces_values_wherever_they_are_and_leaves_the_rest() -> None:
    sent = body()
    sent["instructions"] = f"The user is {EMAIL}."
    sent["input"][0]["content"][0]["text"] = f"Mail {EMAIL}"
    sent["input"][5]["arguments"] = msgspec.json.encode({"to": EMAIL}).decode()
    sent["tools"][0]["description"] = f"Ask {EMAIL}"
    original = msgspec.json.encode(sent)
    result = await scan_request("responses", sent, PiiPolicy(action="redact", entities=["EMAIL_ADDRESS"]))
    assert result.counts == {"EMAIL_ADDRESS": 4} and msgspec.json.encode(sent) == original, "the caller's body is left as it was"
    out = result.body
    assert EMAIL not in msgspec.json.encode(out).decode()
    assert out["instructions"] == "The user is <EMAIL_ADDRESS_1>."
    assert out["input"][0]["content"][0]["text"] == "Mail <EMAIL_ADDRESS_1>"
    assert msgspec.json.decode(out["input"][5]["arguments"]) == {"to": "<EMAIL_ADDRESS_1>"}
    assert out["tools"][0]["description"] == "Ask <EMAIL_ADDRESS_1>"
    assert out["input"][2] is sent["input"][2], "what holds no finding is shared, not copied"
