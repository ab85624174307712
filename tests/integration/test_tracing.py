"""Traces in the GenAI semantic conventions: one root span per request, its steps and upstream tries as
children, the client's W3C trace context continued and passed upstream, no prompt or key on a span."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from bench.fake_upstream import FakeUpstream
from router.auth import hash_api_key
from router.gateway import Gateway
from tests.conftest import TEST_KEY, make_config
from tests.integration.gateway_server import running_gateway

# A trace id of this file's own: the fake upstream is shared by the session, and other tests send the W3C example id.
PARENT_TRACE = uuid.uuid4().hex
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
TRACESTATE = "vendor=opaque-value"
PROMPT = "a very private prompt"
TRACED = {"tracing": True, "exporter": "memory"}


def _chat(model: str = "fake-model", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], **extra}


async def _post(
    base: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None, key: str = TEST_KEY
) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        sent = {"authorization": f"Bearer {key}", **(headers or {})}
        async with http.post(f"{base}{path}", json=body, headers=sent) as resp:
            return resp.status, await resp.read()


def _spans(gateway: Gateway) -> list[ReadableSpan]:
    exporter = gateway.tracing.exporter
    assert exporter is not None
    spans: Sequence[ReadableSpan] = exporter.get_finished_spans()  # type: ignore[attr-defined]
    return list(spans)


def _root(spans: list[ReadableSpan]) -> ReadableSpan:
    (root,) = [s for s in spans if s.kind == SpanKind.SERVER]
    return root


def _children(spans: list[ReadableSpan], root: ReadableSpan) -> list[ReadableSpan]:
    kids = [s for s in spans if s is not root]
    assert root.context is not None
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in kids)
    assert all(s.context is not None and s.context.trace_id == root.context.trace_id for s in kids)
    return kids


def _hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def _upstream_calls(fake: FakeUpstream, trace_id: str) -> list[dict[str, Any]]:
    """What the fake upstream received in this trace (the fake is shared by the session's tests)."""
    return [r for r in fake.requests if trace_id in r["headers"].get("traceparent", "")]


def _no_content(spans: list[ReadableSpan], *texts: str) -> None:
    for span in spans:
        text = repr(dict(span.attributes or {}))
        assert all(t not in text for t in texts), span.name


async def test_chat_span_tree_continues_client_trace_and_names_attempt_upstream(fake_upstream: FakeUpstream) -> None:
    config = make_config(fake_upstream.url, telemetry=TRACED)
    async with running_gateway(config) as (base, gateway):
        headers = {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}
        status, _ = await _post(base, "/v1/chat/completions", _chat(temperature=0.5, top_p=0.9, max_tokens=12), headers)
        assert status == 200
        await gateway.ledger.flush()
        rows = await gateway.ledger.rows("tenant-a", datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC), 10)
        spans = _spans(gateway)
    root = _root(spans)
    assert root.name == "chat fake-model"
    assert root.context is not None and format(root.context.trace_id, "032x") == PARENT_TRACE
    assert root.parent is not None and format(root.parent.span_id, "016x") == PARENT_SPAN
    a = dict(root.attributes or {})
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "fake-model"
    assert a["gen_ai.response.model"] == "fake-model"
    assert a["gen_ai.request.temperature"] == 0.5 and a["gen_ai.request.top_p"] == 0.9 and a["gen_ai.request.max_tokens"] == 12
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["gen_ai.response.finish_reasons"] in (("stop",), ("length",))
    assert str(a["gen_ai.response.id"]).startswith("chatcmpl-")
    assert a["server.address"] == fake_upstream.host and a["server.port"] == fake_upstream.port
    assert a["sluicegate.tenant"] == "tenant-a" and a["sluicegate.deployment"] == "normal"
    assert a["http.response.status_code"] == 200 and "error.type" not in a
    assert root.status.status_code == StatusCode.UNSET
    kids = {s.name: s for s in _children(spans, root)}
    assert set(kids) == {"auth", "routing", "admission", "chat fake-model", "settlement"}
    attempt = kids["chat fake-model"]
    assert attempt.kind == SpanKind.CLIENT
    b = dict(attempt.attributes or {})
    assert b["gen_ai.provider.name"] == "openai" and b["sluicegate.attempt"] == 1 and b["gen_ai.request.temperature"] == 0.5
    assert b["server.address"] == fake_upstream.host and b["gen_ai.usage.output_tokens"] == a["gen_ai.usage.output_tokens"]
    # The upstream was told the attempt's span is its parent, in the client's trace.
    (call,) = _upstream_calls(fake_upstream, PARENT_TRACE)
    assert call["headers"]["traceparent"] == f"00-{PARENT_TRACE}-{_hex(attempt)}-01"
    assert call["headers"]["tracestate"] == TRACESTATE
    assert rows[0].trace_id == PARENT_TRACE
    _no_content(spans, PROMPT, TEST_KEY)
    assert not any(key.startswith(("gen_ai.input", "gen_ai.output")) for s in spans for key in (s.attributes or {}))


async def test_stream_span_reads_finish_reason_and_id_from_chunks(fake_upstream: FakeUpstream) -> None:
    async with running_gateway(make_config(fake_upstream.url, telemetry=TRACED)) as (base, gateway):
        status, body = await _post(base, "/v1/chat/completions", _chat(stream=True, stream_options={"include_usage": True}))
        assert status == 200 and body.endswith(b"data: [DONE]\n\n")
        spans = _spans(gateway)
    root = _root(spans)
    a = dict(root.attributes or {})
    assert root.name == "chat fake-model" and a["sluicegate.stream"] is True and a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.finish_reasons"] == ("stop",)
    assert str(a["gen_ai.response.id"]).startswith("chatcmpl-") and a["gen_ai.response.model"] == "fake-model"
    assert a["gen_ai.usage.output_tokens"] > 0 and a["gen_ai.response.time_to_first_chunk"] > 0
    attempt = next(s for s in _children(spans, root) if s.kind == SpanKind.CLIENT)
    # A stream's try lasts as long as the stream.
    assert attempt.end_time is not None and root.end_time is not None and attempt.end_time <= root.end_time
    assert dict(attempt.attributes or {})["gen_ai.response.finish_reasons"] == ("stop",)
    assert format(root.context.trace_id, "032x") != PARENT_TRACE  # type: ignore[union-attr]
    _no_content(spans, PROMPT, TEST_KEY)


async def test_embeddings_span(fake_upstream: FakeUpstream) -> None:
    async with running_gateway(make_config(fake_upstream.url, telemetry=TRACED)) as (base, gateway):
        status, _ = await _post(base, "/v1/embeddings", {"model": "fake-model", "input": PROMPT, "encoding_format": "float"})
        assert status == 200
        spans = _spans(gateway)
    root = _root(spans)
    a = dict(root.attributes or {})
    assert root.name == "embeddings fake-model" and a["gen_ai.operation.name"] == "embeddings"
    assert a["gen_ai.request.encoding_formats"] == ("float",)
    assert a["gen_ai.usage.input_tokens"] > 0 and "gen_ai.usage.output_tokens" not in a
    assert "embeddings fake-model" in {s.name for s in _children(spans, root)}
    _no_content(spans, PROMPT, TEST_KEY)


async def test_failed_attempt_then_fallback(fake_upstream: FakeUpstream) -> None:
    trace = "5" * 32
    async with running_gateway(make_config(fake_upstream.url, telemetry=TRACED)) as (base, gateway):
        status, _ = await _post(base, "/v1/chat/completions", _chat("fallback"), {"traceparent": f"00-{trace}-{PARENT_SPAN}-01"})
        assert status == 200
        spans = _spans(gateway)
    root = _root(spans)
    tries = sorted((s for s in _children(spans, root) if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    assert [s.name for s in tries] == ["chat error_503", "chat fake-model"]
    failed, served = (dict(s.attributes or {}) for s in tries)
    assert failed["error.type"] == "bad_gateway" and failed["sluicegate.attempt"] == 1
    assert failed["sluicegate.deployment"] == "overloaded" and tries[0].status.status_code == StatusCode.ERROR
    assert "error.type" not in served and served["sluicegate.attempt"] == 2 and tries[1].status.status_code == StatusCode.UNSET
    a = dict(root.attributes or {})
    assert root.name == "chat fallback" and a["sluicegate.deployment"] == "normal" and "error.type" not in a
    # Each try named its own span to its upstream.
    calls = _upstream_calls(fake_upstream, trace)
    assert [c["headers"]["traceparent"] for c in calls] == [f"00-{trace}-{_hex(s)}-01" for s in tries]


async def test_failed_request_has_error_type(fake_upstream: FakeUpstream) -> None:
    async with running_gateway(make_config(fake_upstream.url, telemetry=TRACED)) as (base, gateway):
        status, _ = await _post(base, "/v1/chat/completions", _chat("broken"))
        assert status >= 500
        spans = _spans(gateway)
    root = _root(spans)
    a = dict(root.attributes or {})
    assert a["error.type"] == "bad_gateway" and root.status.status_code == StatusCode.ERROR
    assert a["http.response.status_code"] == status
    assert all(dict(s.attributes or {}).get("error.type") for s in spans if s.kind == SpanKind.CLIENT)


async def test_refused_request_ends_the_step_it_failed_in(fake_upstream: FakeUpstream) -> None:
    policy = {"allowed_models": ["fake-model"]}
    tenants = [{"id": "tenant-a", "keys": [{"id": "key-a", "hash": hash_api_key(TEST_KEY)}], "routing": policy}]
    async with running_gateway(make_config(fake_upstream.url, telemetry=TRACED, tenants=tenants)) as (base, gateway):
        assert (await _post(base, "/v1/chat/completions", {"model": "fake-model", "messages": "not a list"}))[0] == 400
        assert not _spans(gateway)  # refused by the route, before the request began
        status, _ = await _post(base, "/v1/chat/completions", _chat("fallback"))  # an alias the tenant may not call
        assert status == 404
        spans = _spans(gateway)
    root = _root(spans)
    assert dict(root.attributes or {})["error.type"] == "model_not_found" and root.status.status_code == StatusCode.ERROR
    kids = {s.name: s for s in _children(spans, root)}
    assert set(kids) == {"auth", "routing", "settlement"}
    assert dict(kids["routing"].attributes or {})["error.type"] == "model_not_found"
    assert all(s.end_time is not None for s in spans)


async def test_tracing_off_passes_the_client_traceparent_on(fake_upstream: FakeUpstream) -> None:
    trace = "6" * 32
    async with running_gateway(make_config(fake_upstream.url)) as (base, gateway):
        assert not gateway.tracing.enabled and gateway.tracing.exporter is None
        headers = {"traceparent": f"00-{trace}-{PARENT_SPAN}-01", "tracestate": TRACESTATE}
        assert (await _post(base, "/v1/chat/completions", _chat(), headers))[0] == 200
        assert (await _post(base, "/v1/chat/completions", _chat(stream=True), headers))[0] == 200
        invalid = {"traceparent": f"00-{'0' * 32}-{PARENT_SPAN}-01"}
        assert (await _post(base, "/v1/chat/completions", _chat(), invalid))[0] == 200
        await gateway.ledger.flush()
        rows = await gateway.ledger.rows("tenant-a", datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC), 10)
    calls = [r for r in fake_upstream.requests if r["headers"].get("traceparent") == headers["traceparent"]]
    assert len(calls) == 2 and all(c["headers"]["tracestate"] == TRACESTATE for c in calls)
    assert not [r for r in fake_upstream.requests if r["headers"].get("traceparent") == invalid["traceparent"]]
    assert sorted(r.trace_id or "" for r in rows) == ["", trace, trace]


def _content_config(upstream: str, **tenant: Any) -> Any:
    tenants = [{"id": "tenant-a", "keys": [{"id": "key-a", "hash": hash_api_key(TEST_KEY)}], "trace_content": True, **tenant}]
    return make_config(upstream, telemetry=TRACED, tenants=tenants)


async def test_content_recorded_for_a_tenant_that_opted_in(fake_upstream: FakeUpstream) -> None:
    async with running_gateway(_content_config(fake_upstream.url)) as (base, gateway):
        body = {"model": "fake-model", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]}
        status, reply = await _post(base, "/v1/chat/completions", body)
        assert status == 200
        await _post(base, "/v1/chat/completions", {**body, "stream": True})
        spans = _spans(gateway)
    unary, stream = sorted((s for s in spans if s.kind == SpanKind.SERVER), key=lambda s: s.start_time or 0)
    for root in (unary, stream):
        a = dict(root.attributes or {})
        assert msgspec.json.decode(str(a["gen_ai.input.messages"])) == [
            {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
            {"role": "user", "parts": [{"type": "text", "content": PROMPT}]},
        ]
        (answer,) = msgspec.json.decode(str(a["gen_ai.output.messages"]))
        assert answer["role"] == "assistant" and answer["finish_reason"] == "stop"
        (part,) = answer["parts"]
        assert part["type"] == "text" and part["content"]
    text = msgspec.json.decode(reply)["choices"][0]["message"]["content"]
    assert msgspec.json.decode(str(dict(unary.attributes or {})["gen_ai.output.messages"]))[0]["parts"][0]["content"] == text


async def test_every_surface_names_its_operation(fake_upstream: FakeUpstream) -> None:
    calls = [
        ("/v1/completions", {"model": "fake-model", "prompt": PROMPT}, "text_completion fake-model"),
        ("/v1/messages", {"model": "fake-model", "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}]}, "chat fake-model"),
        ("/v1/responses", {"model": "fake-model", "input": PROMPT, "store": False}, "chat fake-model"),
    ]
    async with running_gateway(make_config(fake_upstream.url, telemetry=TRACED)) as (base, gateway):
        for path, body, _ in calls:
            assert (await _post(base, path, body))[0] == 200
        spans = _spans(gateway)
    roots = sorted((s for s in spans if s.kind == SpanKind.SERVER), key=lambda s: s.start_time or 0)
    assert [r.name for r in roots] == [name for _, _, name in calls]
    assert dict(roots[1].attributes or {})["gen_ai.request.max_tokens"] == 16
    assert all(s.end_time is not None for s in spans) and {s.name for s in spans} >= {"auth", "settlement"}
    _no_content(spans, PROMPT, TEST_KEY)
