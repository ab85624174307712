"""The GenAI conventions' vocabulary: providers, servers, request settings, replies, streams, content, trace context."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from core.principal import Principal
from router.context import RequestContext
from router.tracing import pass_through
from router.tracing_content import content_attributes, input_messages, output_messages
from router.tracing_genai import finish_reasons, reply_attributes, request_attributes, stream_attributes, upstream_attributes
from serving.base import EngineRequest, StreamChunk, Usage
from serving.sse import peek_chunk
from serving.triton import trace_metadata


def _deployment(provider: str, base_url: str = "", *, privacy: str = "cloud", options: dict[str, Any] | None = None) -> Any:
    config = SimpleNamespace(provider=provider, base_url=base_url, privacy=privacy, options=options, model="m", name="d")
    return SimpleNamespace(config=config, engine=SimpleNamespace(provider="from-plugin"), name="d")


@pytest.mark.parametrize(
    ("provider", "base_url", "options", "expected"),
    [
        ("openai", "", None, {"gen_ai.provider.name": "openai", "server.address": "api.openai.com", "server.port": 443}),
        ("openai_compatible", "http://10.0.0.5:8000/v1", None,
         {"gen_ai.provider.name": "openai", "server.address": "10.0.0.5", "server.port": 8000}),
        ("azure", "https://res.openai.azure.com", None,
         {"gen_ai.provider.name": "azure.ai.openai", "server.address": "res.openai.azure.com", "server.port": 443}),
        ("anthropic", "", None, {"gen_ai.provider.name": "anthropic", "server.address": "api.anthropic.com", "server.port": 443}),
        ("gemini", "", None,
         {"gen_ai.provider.name": "gcp.gemini", "server.address": "generativelanguage.googleapis.com", "server.port": 443}),
        ("gemini", "", {"vertex": {"project": "p", "location": "europe-west4"}},
         {"gen_ai.provider.name": "gcp.vertex_ai", "server.address": "europe-west4-aiplatform.googleapis.com", "server.port": 443}),
        ("triton", "triton.internal:8001", None,
         {"gen_ai.provider.name": "triton", "server.address": "triton.internal", "server.port": 8001}),
        ("vllm", "", None, {"gen_ai.provider.name": "vllm"}),
        ("llamacpp", "", None, {"gen_ai.provider.name": "llama.cpp"}),
        ("plugin", "", None, {"gen_ai.provider.name": "from-plugin"}),
    ],
)  # fmt: skip
def test_provider_and_server(provider: str, base_url: str, options: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    assert upstream_attributes(_deployment(provider, base_url, options=options)) == expected


def test_request_settings_only_when_set() -> None:
    assert request_attributes("chat", {"model": "m", "messages": []}) == {}
    body = {
        "max_tokens": 10,
        "temperature": 1,
        "top_p": 0.5,
        "seed": True,
        "n": 2,
        "stop": "END",
        "response_format": {"type": "json_schema"},
    }
    assert request_attributes("chat", body) == {
        "gen_ai.request.max_tokens": 10,
        "gen_ai.request.temperature": 1.0,
        "gen_ai.request.top_p": 0.5,
        "gen_ai.request.choice.count": 2,
        "gen_ai.request.stop_sequences": ["END"],
        "gen_ai.output.type": "json",
    }
    assert request_attributes("responses", {"max_output_tokens": 64}) == {"gen_ai.request.max_tokens": 64}
    assert request_attributes("embedding", {"encoding_format": "base64", "dimensions": 256}) == {
        "gen_ai.request.encoding_formats": ["base64"],
        "gen_ai.embeddings.dimension.count": 256,
    }


def test_reply_attributes_of_completions_and_responses() -> None:
    chat = {"id": "chatcmpl-1", "model": "gpt-x", "choices": [{"finish_reason": "stop"}, {"finish_reason": "length"}]}
    assert reply_attributes(msgspec.json.encode(chat)) == {
        "gen_ai.response.id": "chatcmpl-1",
        "gen_ai.response.model": "gpt-x",
        "gen_ai.response.finish_reasons": ["stop", "length"],
    }
    response = {
        "id": "resp_1",
        "model": "gpt-x",
        "object": "response",
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
    }
    assert reply_attributes(msgspec.json.encode(response))["gen_ai.response.finish_reasons"] == ["length"]
    assert reply_attributes(b"not json") == {}


def _sse(choices: list[dict[str, Any]], **extra: Any) -> StreamChunk:
    return peek_chunk(msgspec.json.encode({"id": "chatcmpl-9", "model": "gpt-x", "choices": choices, **extra}))


def test_stream_attributes_read_the_first_and_last_chunks_only() -> None:
    words = [_sse([{"index": 0, "delta": {"content": f"w{i}"}, "finish_reason": None}]) for i in range(50)]
    end = _sse([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    usage = _sse([], usage={"prompt_tokens": 1, "completion_tokens": 50, "total_tokens": 51})
    chunks = [*words, end, usage]
    assert stream_attributes("chat", chunks) == {
        "gen_ai.response.id": "chatcmpl-9",
        "gen_ai.response.model": "gpt-x",
        "gen_ai.response.finish_reasons": ["stop"],
    }
    # Decoded: the finish chunk and the one before it, not the stream's middle.
    assert [c.text is not None for c in words[-3:]] == [False, False, True]
    cut_short = [_sse([{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]) for _ in range(50)]
    assert finish_reasons(cut_short) == [] and sum(c.text is not None for c in cut_short) <= 9


def test_content_shapes() -> None:
    chat = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:..."}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]}  # fmt: skip
    assert input_messages("chat", chat) == [
        {"role": "user", "parts": [{"type": "text", "content": "look"}, {"type": "image_url"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "f", "arguments": {"a": 1}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "42"}]},
    ]
    assert input_messages("completion", {"prompt": ["a", "b"]}) == [
        {"role": "user", "parts": [{"type": "text", "content": "a"}]},
        {"role": "user", "parts": [{"type": "text", "content": "b"}]},
    ]
    assert input_messages("embedding", {"input": "secret"}) == []
    reply = {
        "choices": [
            {
                "message": {"content": None, "tool_calls": [{"id": "c2", "function": {"name": "g", "arguments": "x"}}]},
                "finish_reason": "tool_calls",
            }
        ]
    }
    assert output_messages(msgspec.json.encode(reply)) == [
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c2", "name": "g", "arguments": "x"}], "finish_reason": "tool_call"}
    ]


def _ctx(**fields: Any) -> RequestContext:
    body = {"model": "alias", "messages": [{"role": "user", "content": "mail ann@example.com"}]}
    return RequestContext("r1", SimpleNamespace(version=1), Principal(tenant="t", key_id="k"), "chat", "chat", "alias", body, **fields)  # type: ignore[arg-type]


REDACTED = {"model": "alias", "messages": [{"role": "user", "content": "mail <EMAIL_ADDRESS_1>"}]}
ANSWER = msgspec.json.encode({"choices": [{"message": {"content": "ann@example.com"}, "finish_reason": "stop"}]})


def test_content_is_what_the_policy_let_out_whichever_deployment_served() -> None:
    # PII found and redacted, a cloud deployment served: the redacted prompt and the cloud's answer.
    cloud = content_attributes(_ctx(cloud_body=REDACTED, served=_deployment("openai")), ANSWER, [])
    assert "<EMAIL_ADDRESS_1>" in cloud["gen_ai.input.messages"] and "gen_ai.output.messages" in cloud
    # A self-hosted deployment served it: the redacted prompt still, and not its answer (it saw the original).
    local = content_attributes(_ctx(cloud_body=REDACTED, served=_deployment("openai", privacy="self_hosted")), ANSWER, [])
    assert "ann@example.com" not in repr(local) and "gen_ai.output.messages" not in local
    # Restricted (PII found, nothing redacted): nothing at all.
    assert content_attributes(_ctx(self_hosted_only=True, served=_deployment("openai", privacy="self_hosted")), ANSWER, []) == {}
    # No PII policy changed anything: as sent and as answered.
    plain = content_attributes(_ctx(served=_deployment("openai", privacy="self_hosted")), ANSWER, [])
    assert "ann@example.com" in plain["gen_ai.input.messages"] and "ann@example.com" in plain["gen_ai.output.messages"]


def test_streamed_content_joins_the_chunks() -> None:
    chunks = [_sse([{"index": 0, "delta": {"content": "he"}}]), _sse([{"index": 0, "delta": {"content": "llo"}, "finish_reason": "stop"}])]
    ctx = _ctx(served=_deployment("openai"), stream=True, generated=chunks, usage=Usage(1, 2, 3))
    out = msgspec.json.decode(content_attributes(ctx, None, ["stop"])["gen_ai.output.messages"])
    assert out == [{"role": "assistant", "parts": [{"type": "text", "content": "hello"}], "finish_reason": "stop"}]


@pytest.mark.parametrize(
    ("header", "continued"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", True),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-later-fields", True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", False),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),
        ("garbage", False),
    ],
)
def test_tracing_off_passes_only_a_valid_traceparent(header: str, continued: bool) -> None:
    ctx = _ctx()
    pass_through(ctx, header, "k=v")
    assert (ctx.trace_id, ctx.traceparent, ctx.tracestate) == (
        ("4bf92f3577b34da6a3ce929d0e0e4736", header, "k=v") if continued else (None, None, None)
    )


def test_triton_sends_the_trace_context_as_grpc_metadata() -> None:
    assert trace_metadata(EngineRequest(kind="chat", body={}, request_id="r")) is None
    request = EngineRequest(kind="chat", body={}, request_id="r", traceparent="00-a-b-01", tracestate="k=v")
    assert trace_metadata(request) == {"traceparent": "00-a-b-01", "tracestate": "k=v"}
