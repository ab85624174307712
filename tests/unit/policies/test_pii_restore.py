"""Restoring placeholders in responses, whole and streamed: policies.pii_restore."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from policies.pii import PiiPolicy, scan_request
from policies.pii_restore import Restorer, StreamRestorer

MAPPING = {
    "<EMAIL_ADDRESS_1>": "jane.doe@example.org",
    "<PERSON_1>": 'Jane "JJ" Doe',
    "<PHONE_NUMBER_12>": "+1 415-555-2671",
}
RESTORER = Restorer(MAPPING)
TEXT = "Dear <PERSON_1>, we wrote to <EMAIL_ADDRESS_1> (see <PHONE_NUMBER_12>)."
RESTORED = 'Dear Jane "JJ" Doe, we wrote to jane.doe@example.org (see +1 415-555-2671).'


def chunk(content: str | None = None, finish: str | None = None, index: int = 0, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}).encode()


def contents(payloads: list[bytes], field: str = "content") -> str:
    out = ""
    for payload in payloads:
        for choice in json.loads(payload)["choices"]:
            out += choice.get("delta", {}).get(field) or ""
    return out


def test_restore_text_replaces_known_placeholders_only() -> None:
    assert RESTORER.restore_text(TEXT) == RESTORED
    assert RESTORER.restore_text("a <PERSON_2> and <person_1> and <b>") == "a <PERSON_2> and <person_1> and <b>"


def test_restore_completion_for_chat_and_text_completion_bodies() -> None:
    chat = {
        "id": "x",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"},
            {
                "index": 1,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "t", "type": "function", "function": {"name": "f", "arguments": json.dumps({"who": "<PERSON_1>"})}}
                    ],
                },
            },
        ],
        "usage": {"prompt_tokens": 3},
    }
    out = json.loads(RESTORER.restore_completion(json.dumps(chat).encode()))
    assert out["choices"][0]["message"]["content"] == RESTORED
    # Inside JSON arguments the original is escaped, so they stay valid JSON.
    assert json.loads(out["choices"][1]["message"]["tool_calls"][0]["function"]["arguments"]) == {"who": 'Jane "JJ" Doe'}
    assert out["usage"] == {"prompt_tokens": 3} and out["id"] == "x"
    text = {"object": "text_completion", "choices": [{"index": 0, "text": TEXT}]}
    assert json.loads(RESTORER.restore_completion(json.dumps(text).encode()))["choices"][0]["text"] == RESTORED


def test_restore_completion_reads_escaped_angle_brackets() -> None:
    body = b'{"choices":[{"index":0,"message":{"content":"hi \\u003cEMAIL_ADDRESS_1\\u003e"}}]}'
    assert json.loads(RESTORER.restore_completion(body))["choices"][0]["message"]["content"] == "hi jane.doe@example.org"


@pytest.mark.parametrize("body", [b"not json <x>", b'{"error": {"message": "<PERSON_1>"}}', b'{"choices": []}'])
def test_restore_completion_leaves_other_bodies_alone(body: bytes) -> None:
    assert RESTORER.restore_completion(body) == body


def test_bodies_without_placeholders_pass_through_untouched() -> None:
    body = b'{"choices":[{"index":0,"message":{"content":"plain"}}]}'
    assert RESTORER.restore_completion(body) is body
    stream = RESTORER.stream()
    assert stream.feed_chunk(body) is body


@pytest.mark.parametrize("split", range(len(TEXT) + 1))
def test_stream_restores_placeholders_split_at_any_point(split: int) -> None:
    stream = RESTORER.stream()
    out = [stream.feed_chunk(chunk(TEXT[:split])), stream.feed_chunk(chunk(TEXT[split:])), stream.feed_chunk(chunk(finish="stop"))]
    assert contents(out) == RESTORED
    assert json.loads(out[-1])["choices"][0]["finish_reason"] == "stop"
    assert stream.flush() is None


@pytest.mark.parametrize("split", range(1, len("<EMAIL_ADDRESS_1>")))
def test_stream_text_held_back_is_released_with_the_finish_chunk(split: int) -> None:
    stream = RESTORER.stream()
    first = stream.feed_chunk(chunk("mail <EMAIL_ADDRESS_1>"[: 5 + split]))
    assert contents([first]) == "mail "
    last = stream.feed_chunk(chunk(finish="length"))
    # The stream stopped mid-placeholder: the fragment comes out as it was.
    assert contents([last]) == "<EMAIL_ADDRESS_1>"[:split]


@pytest.mark.parametrize("text", ["a < b", "x <", "<<PERSON_1>", "<PERSON_1", "<PERSON_1x>", "1 <2> 3", "<EMAIL_ADDRESS_10>"])
def test_stream_releases_angle_brackets_that_are_not_placeholders(text: str) -> None:
    for split in range(len(text) + 1):
        stream = RESTORER.stream()
        out = [stream.feed_chunk(chunk(text[:split])), stream.feed_chunk(chunk(text[split:], finish="stop"))]
        assert contents(out) == RESTORER.restore_text(text)


def test_stream_tool_call_arguments_are_restored_per_call_and_json_escaped() -> None:
    args = json.dumps({"who": "<PERSON_1>", "mail": "<EMAIL_ADDRESS_1>"})
    for split in range(len(args) + 1):
        stream = RESTORER.stream()
        out = []
        for part in (args[:split], args[split:]):
            calls = [{"index": 0, "function": {"arguments": part}}, {"index": 1, "function": {"arguments": "<PERSON_1"}}]
            out.append(stream.feed_chunk(chunk(tool_calls=calls)))
        out.append(stream.feed_chunk(chunk(finish="tool_calls")))
        by_call: dict[int, str] = {}
        for payload in out:
            for call in json.loads(payload)["choices"][0]["delta"].get("tool_calls", []):
                by_call[call["index"]] = by_call.get(call["index"], "") + call["function"]["arguments"]
        assert json.loads(by_call[0]) == {"who": 'Jane "JJ" Doe', "mail": "jane.doe@example.org"}
        assert by_call[1] == "<PERSON_1<PERSON_1"


def test_stream_keeps_choices_apart_and_text_completions_work() -> None:
    stream = RESTORER.stream()
    payloads = [
        b'{"object":"text_completion","choices":[{"index":0,"text":"to <EMAIL_"},{"index":1,"text":"<PER"}]}',
        b'{"object":"text_completion","choices":[{"index":1,"text":"SON_1>!"},{"index":0,"text":"ADDRESS_1>."}]}',
        b'{"object":"text_completion","choices":[{"index":0,"text":"","finish_reason":"stop"}]}',
        b'{"object":"text_completion","choices":[{"index":1,"text":"","finish_reason":"stop"}]}',
    ]
    texts: dict[int, str] = {0: "", 1: ""}
    for payload in payloads:
        for choice in json.loads(stream.feed_chunk(payload))["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == {0: "to jane.doe@example.org.", 1: 'Jane "JJ" Doe!'}


def test_flush_emits_what_is_held_when_the_stream_ends_without_finish() -> None:
    stream = RESTORER.stream()
    first = stream.feed_chunk(chunk("bye <PERSON"))
    tail = stream.flush()
    assert tail is not None
    assert contents([first]) + contents([tail]) == "bye <PERSON"
    assert json.loads(tail)["id"] == "c1" and json.loads(tail)["object"] == "chat.completion.chunk"
    assert stream.flush() is None


@pytest.mark.parametrize("payload", [b"[DONE]", b'{"error": {"message": "boom"}}', b'{"choices": [], "usage": {"total_tokens": 3}}'])
def test_stream_passes_other_payloads_through_and_keeps_what_it_holds(payload: bytes) -> None:
    stream = StreamRestorer(RESTORER)
    assert contents([stream.feed_chunk(chunk("x <"))]) == "x "
    out = stream.feed_chunk(payload)
    assert out == payload or msgspec.json.decode(out) == msgspec.json.decode(payload)
    assert contents([stream.feed_chunk(chunk(finish="stop"))]) == "<"


async def test_mask_and_restore_round_trip_through_a_fake_upstream_reply() -> None:
    prompt = "Forward this to jane.doe@example.org and call +1 415-555-2671, says John Smith."
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    result = await scan_request("chat", body, PiiPolicy(action="mask_and_restore"))
    assert result.restorer is not None
    sent = result.body["messages"][0]["content"]
    assert "jane.doe@example.org" not in sent and "<EMAIL_ADDRESS_1>" in sent and "<PERSON_1>" in sent
    # The fake upstream echoes the masked prompt, whole and streamed in small pieces.
    reply = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": sent}}]}
    restored = json.loads(result.restorer.restore_completion(json.dumps(reply).encode()))
    assert restored["choices"][0]["message"]["content"] == prompt
    stream = result.restorer.stream()
    pieces = [stream.feed_chunk(chunk(sent[i : i + 3])) for i in range(0, len(sent), 3)]
    pieces.append(stream.feed_chunk(chunk(finish="stop")))
    assert contents(pieces) == prompt
