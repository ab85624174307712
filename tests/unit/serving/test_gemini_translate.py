"""OpenAI chat <--> Gemini generateContent: requests, replies, streams, errors, embeddings."""

from __future__ import annotations

import base64
import struct
from typing import Any

import msgspec
import pytest

from core.errors import InvalidRequest, UpstreamError
from serving.gemini_embed import batch_embed_request, embedding_inputs, predict_request, to_openai_embeddings
from serving.gemini_errors import google_error
from serving.gemini_reply import max_calls, to_openai_response
from serving.gemini_stream import StreamTranslator
from serving.gemini_translate import SKIP_SIGNATURE, to_gemini_request

PIXEL = "iVBORw0KGgo="
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
USAGE = {"promptTokenCount": 12, "candidatesTokenCount": 6, "thoughtsTokenCount": 3, "cachedContentTokenCount": 4}


def chat(*messages: dict[str, Any], model: str = "gemini-2.5-flash", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), **extra}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant_call(call_id: str, name: str = "get_weather", arguments: str = '{"city":"Paris"}', **extra: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}, **extra}


# --- request: OpenAI --> Gemini ----------------------------------------------


def test_messages_system_and_generation_config() -> None:
    body = chat(
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
        user("Hi"),
        {"role": "assistant", "content": "Salut"},
        user([{"type": "text", "text": "And?"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]),
        max_completion_tokens=50, temperature=0.2, top_p=0.9, stop="END", n=2, seed=7, stream=True, user="u-1",
    )  # fmt: skip
    assert to_gemini_request(body) == {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Use French."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Salut"}]},
            {"role": "user", "parts": [{"text": "And?"}, {"inlineData": {"mimeType": "image/png", "data": PIXEL}}]},
        ],
        "generationConfig": {
            "maxOutputTokens": 50, "temperature": 0.2, "topP": 0.9, "seed": 7, "candidateCount": 2, "stopSequences": ["END"],
        },
    }  # fmt: skip


def test_tool_round_trip_becomes_function_call_and_named_function_response() -> None:
    body = chat(
        user("Weather in Paris and Rome?"),
        {"role": "assistant", "content": None, "tool_calls": [assistant_call("c1"), assistant_call("c2", "get_time", "{}")]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 18}'},
        {"role": "tool", "tool_call_id": "c2", "content": "noon"},
        tools=[{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER}},
               {"type": "function", "function": {"name": "get_time"}}],
    )  # fmt: skip
    out = to_gemini_request(body)
    assert out["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                                    {"functionCall": {"name": "get_time", "args": {}}}]},
        # Parallel results share one user turn; a JSON object result is the response itself.
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp": 18}}},
                                   {"functionResponse": {"name": "get_time", "response": {"output": "noon"}}}]},
    ]  # fmt: skip
    assert out["tools"] == [
        {"functionDeclarations": [
            {"name": "get_weather", "description": "Weather", "parametersJsonSchema": WEATHER}, {"name": "get_time"},
        ]}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        ("required", {"mode": "ANY"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
    ],
)
def test_tool_choice(choice: Any, config: dict[str, Any]) -> None:
    assert to_gemini_request(chat(user("x"), tool_choice=choice))["toolConfig"] == {"functionCallingConfig": config}


def test_response_formats() -> None:
    schema_format = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    assert to_gemini_request(chat(user("x"), response_format=schema_format))["generationConfig"] == {
        "responseMimeType": "application/json", "responseJsonSchema": WEATHER,
    }  # fmt: skip
    json_object = to_gemini_request(chat(user("x"), response_format={"type": "json_object"}))
    assert json_object["generationConfig"] == {"responseMimeType": "application/json"}
    assert "generationConfig" not in to_gemini_request(chat(user("x"), response_format={"type": "text"}))


def test_gemini_3_replays_thought_signatures_or_the_documented_stand_in() -> None:
    signed = assistant_call("c1", extra_content={"google": {"thought_signature": "sig-1"}})
    history = [user("go"), {"role": "assistant", "tool_calls": [signed]}, {"role": "tool", "tool_call_id": "c1", "content": "ok"},
               {"role": "assistant", "tool_calls": [assistant_call("c2"), assistant_call("c3")]}]  # fmt: skip
    turns = to_gemini_request(chat(*history, model="gemini-3-pro-preview"))["contents"]
    assert turns[1]["parts"][0]["thoughtSignature"] == "sig-1"
    # A turn the client kept no signature for: only its first call gets the stand-in.
    assert [p.get("thoughtSignature") for p in turns[3]["parts"]] == [SKIP_SIGNATURE, None]
    older = to_gemini_request(chat(*history, model="gemini-2.5-flash"))["contents"]
    assert [p.get("thoughtSignature") for p in older[3]["parts"]] == [None, None]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(user("x"), logprobs=True), "logprobs"),
        (chat(user("x"), logit_bias={"1": 2}), "logit_bias"),
        (chat(user("x"), reasoning_effort="low"), "reasoning_effort"),
        (chat(user("x"), n=0), "n"),
        (chat(user("x"), max_tokens="many"), "max_tokens"),
        (chat(user("x"), temperature="hot"), "temperature"),
        (chat(user("x"), response_format={"type": "json_schema", "json_schema": {}}), "response_format.json_schema"),
        (chat(user("x"), tool_choice="sometimes"), "tool_choice"),
        (chat(user("x"), tools=[{"type": "web_search"}]), "tools[0]"),
        (chat({"role": "system", "content": "only this"}), "messages"),
        (chat(user([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}])), "messages[0].content[0].image_url"),
        (chat(user([{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}])), "messages[0].content[0].image_url"),
        (chat(user("x"), {"role": "tool", "tool_call_id": "never-made", "content": "r"}), "messages[1].tool_call_id"),
        (chat(user("x"), {"role": "assistant", "tool_calls": [assistant_call("c", arguments="[1]")]}),
         "messages[1].tool_calls[0].function.arguments"),
        (chat(user("x"), {"role": "robot", "content": "x"}), "messages[1].role"),
        ({"messages": [user("x")]}, "model"),
    ],
)  # fmt: skip
def test_what_gemini_cannot_do_is_refused_naming_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_gemini_request(body)
    assert info.value.param == param


def test_audio_and_file_parts_become_inline_data() -> None:
    parts = [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
             {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERg==", "filename": "a.pdf"}}]  # fmt: skip
    assert to_gemini_request(chat(user(parts)))["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERg=="}},
    ]


# --- reply: Gemini --> OpenAI ------------------------------------------------


def reply(*parts: dict[str, Any], finish: str = "STOP", **extra: Any) -> dict[str, Any]:
    candidate = {"content": {"role": "model", "parts": list(parts)}, "finishReason": finish, "index": 0}
    return {"candidates": [candidate], "usageMetadata": USAGE, "modelVersion": "gemini-2.5-flash-001", "responseId": "r1", **extra}


def test_text_reply_usage_counts_thinking_as_completion_and_skips_thoughts() -> None:
    body, usage = to_openai_response(reply({"text": "pondering", "thought": True}, {"text": "Hel"}, {"text": "lo"}), model="m", created=5)
    assert body == {
        "id": "chatcmpl-r1", "object": "chat.completion", "created": 5, "model": "gemini-2.5-flash-001",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21, "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 3}},
    }  # fmt: skip
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (12, 9, 4)


def test_function_calls_become_tool_calls_with_ids_and_signatures() -> None:
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "sig"}
    body, _ = to_openai_response(reply(call, {"functionCall": {"name": "get_time"}}), model="m")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    first, second = choice["message"]["tool_calls"]
    assert first["id"].startswith("call_") and first["id"] != second["id"]
    assert first["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert first["extra_content"] == {"google": {"thought_signature": "sig"}}
    assert second["function"] == {"name": "get_time", "arguments": "{}"} and "extra_content" not in second


@pytest.mark.parametrize(
    ("gemini", "openai"),
    [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
     ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
     ("MALFORMED_FUNCTION_CALL", "stop"), ("OTHER", "stop")],
)  # fmt: skip
def test_finish_reasons(gemini: str, openai: str) -> None:
    body, _ = to_openai_response(reply({"text": "x"}, finish=gemini), model="m")
    assert body["choices"][0]["finish_reason"] == openai


def test_blocked_prompt_is_an_empty_filtered_answer() -> None:
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}}
    body, usage = to_openai_response(blocked, model="gemini-x")
    assert body["model"] == "gemini-x"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter", "logprobs": None}
    ]
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (7, 0)


def test_candidates_map_to_choices_and_missing_usage_is_none() -> None:
    two = {"candidates": [{"content": {"parts": [{"text": "a"}]}, "finishReason": "STOP", "index": 0},
                          {"content": {"parts": [{"text": "b"}]}, "finishReason": "MAX_TOKENS", "index": 1}]}  # fmt: skip
    body, usage = to_openai_response(two, model="m")
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [(0, "a", "stop"), (1, "b", "length")]
    assert usage is None and "usage" not in body


def test_malformed_reply_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamError):
        to_openai_response({"candidates": [{"content": {"parts": [{"functionCall": {}}]}}]}, model="m")


# --- streams -----------------------------------------------------------------


def feed(events: list[dict[str, Any]]) -> tuple[StreamTranslator, list[dict[str, Any]], list[Any]]:
    translator = StreamTranslator(model="requested", created=1)
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    chunks += translator.final_chunks() if translator.done else []
    return translator, [msgspec.json.decode(c.data) for c in chunks], chunks


def event(*parts: dict[str, Any], finish: str | None = None, usage: dict[str, Any] | None = None, index: int = 0) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, "index": index}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "usageMetadata": usage or {"promptTokenCount": 12}, "responseId": "s1", "modelVersion": "gm"}


def test_stream_text_finish_and_final_usage_chunk() -> None:
    translator, payloads, chunks = feed([event({"text": "Hel"}), event({"text": "lo"}, finish="STOP", usage=USAGE)])
    assert translator.done
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {p["id"] for p in payloads} == {"chatcmpl-s1"} and {p["model"] for p in payloads} == {"gm"}
    assert "".join(c.text for c in chunks) == "Hello"
    assert chunks[-2].finish_reason == "stop" and payloads[-2]["choices"][0]["delta"] == {}
    last = chunks[-1]
    assert last.usage_only and payloads[-1]["choices"] == []
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.cached_tokens) == (12, 9, 4)


def test_stream_function_call() -> None:
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    _, payloads, chunks = feed([event(call, {"functionCall": {"name": "get_time", "args": {}}}, finish="STOP", usage=USAGE)])
    calls = [c for p in payloads if p["choices"] for c in p["choices"][0]["delta"].get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "get_weather", '{"city":"Paris"}'), (1, "get_time", "{}"),
    ]  # fmt: skip
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert chunks[-2].finish_reason == "tool_calls"


def test_stream_blocked_prompt_and_unfinished_and_error() -> None:
    translator, _, chunks = feed([{"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}}])
    assert translator.done and chunks[-2].finish_reason == "content_filter" and chunks[-1].usage_only
    unfinished, _, _ = feed([event({"text": "partial"})])
    assert not unfinished.done
    with pytest.raises(UpstreamError, match="UNAVAILABLE"):
        StreamTranslator(model="m").feed({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})


def test_stream_with_two_candidates_is_done_when_both_finish() -> None:
    translator = StreamTranslator(model="m")
    translator.feed(event({"text": "a"}, index=0))
    translator.feed(event({"text": "b"}, index=1))
    translator.feed(event({"text": "!"}, finish="STOP", index=0))
    assert not translator.done
    [chunk] = translator.feed(event(finish="MAX_TOKENS", index=1))
    assert chunk.finish_reason == "length" and translator.done


# --- errors and embeddings ---------------------------------------------------


def test_google_error_envelope() -> None:
    raw = msgspec.json.encode([{"error": {
        "code": 429, "message": "quota for key secret-k", "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}],
    }}])  # fmt: skip
    error = google_error(raw, "secret-k")
    assert (error.fields.code, error.retry_delay, error.credentials_refused) == ("RESOURCE_EXHAUSTED", "13", False)
    assert "secret-k" not in error.fields.message
    bad_key = {
        "error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "API key not valid.", "details": [{"reason": "API_KEY_INVALID"}]}
    }
    assert google_error(msgspec.json.encode(bad_key), None).credentials_refused
    assert google_error(b"<html>oops</html>", None).fields.message == ""


def test_embeddings_requests_and_reply() -> None:
    body = {"model": "text-embedding-004", "input": ["a", "bb"], "dimensions": 2}
    texts = embedding_inputs(body)
    assert batch_embed_request(body, "models/text-embedding-004", texts)["requests"][1] == {
        "model": "models/text-embedding-004", "content": {"parts": [{"text": "bb"}]}, "outputDimensionality": 2,
    }  # fmt: skip
    assert predict_request(body, texts) == {"instances": [{"content": "a"}, {"content": "bb"}], "parameters": {"outputDimensionality": 2}}
    out, usage = to_openai_embeddings({"embeddings": [{"values": [0.5, 1]}, {"values": [0, 0.25]}]}, body, texts)
    assert out["data"][1] == {"object": "embedding", "index": 1, "embedding": [0.0, 0.25]}
    assert out["usage"] == {"prompt_tokens": 2, "total_tokens": 2} and usage.prompt_tokens == 2  # estimated
    vertex = {"predictions": [{"embeddings": {"values": [1.0], "statistics": {"token_count": 5}}}] * 2}
    assert to_openai_embeddings(vertex, body, texts)[1].prompt_tokens == 10  # counted by Vertex
    encoded, _ = to_openai_embeddings({"embeddings": [{"values": [0.5, 1]}] * 2}, {**body, "encoding_format": "base64"}, texts)
    assert struct.unpack("<2f", base64.b64decode(encoded["data"][0]["embedding"])) == (0.5, 1.0)
    with pytest.raises(UpstreamError):
        to_openai_embeddings({"embeddings": [{"values": [1]}]}, body, texts)


@pytest.mark.parametrize(
    ("body", "param"),
    [({"input": [[1, 2]]}, "input"), ({"input": ""}, "input"), ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
     ({"input": "x", "dimensions": 0}, "dimensions")],
)  # fmt: skip
def test_embedding_inputs_refused(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        embedding_inputs(body)
    assert info.value.param == param


def test_parallel_tool_calls_false_keeps_the_first_call_only() -> None:
    """Gemini has no setting for it: the request goes as it is, and the reply keeps one call."""
    first = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    second = {"functionCall": {"name": "get_time", "args": {}}}
    body = chat(user("x"), parallel_tool_calls=False)
    assert "parallel_tool_calls" not in msgspec.json.encode(to_gemini_request(body)).decode()
    assert max_calls(body) == 1 and max_calls(chat(user("x"))) is None
    answer, _ = to_openai_response(reply(first, second), model="m", max_calls=max_calls(body))
    [call] = answer["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and answer["choices"][0]["finish_reason"] == "tool_calls"
    translator = StreamTranslator(model="m", max_calls=1)
    chunks = [msgspec.json.decode(c.data) for c in translator.feed(event(first, second, finish="STOP", usage=USAGE))]
    streamed = [c for p in chunks if p["choices"] for c in p["choices"][0]["delta"].get("tool_calls", [])]
    assert [c["function"]["name"] for c in streamed] == ["get_weather"]
