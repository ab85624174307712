"""A native deployment's Response and events relayed as the gateway's, checked against the openai SDK's types.

The upstream's answers are the fake upstream's (``bench.fake_responses``), so
what is relayed here is what the e2e tests' upstream sends.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import msgspec
import pydantic
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from bench.fake_replies import Reply
from bench.fake_responses import Answer, chat_view
from bench.fake_streams import chat_events
from core.errors import UpstreamError
from policies.pii_restore import Restorer
from router.responses_relay import NativeRenderer
from router.responses_render import ResponseHead
from router.responses_surface import echo
from router.responses_wire import decode_native
from serving.base import Usage

EVENTS: pydantic.TypeAdapter[ResponseStreamEvent] = pydantic.TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
EMAIL = "jane.doe@example.com"
KNOWN_TO_API = {"store"}  # echoed by the API, not modelled by this SDK release


def renderer(**body: Any) -> NativeRenderer:
    request, kept, _ = decode_native({"model": "alias", "input": "hi", **body})
    return NativeRenderer(ResponseHead("resp_gw1", 1_700_000_000, "alias", echo(request, kept)))


def ctx(native: bool = True, usage: Usage | None = None, restorer: Restorer | None = None) -> Any:
    served = SimpleNamespace(engine=SimpleNamespace(native_responses=native), config=SimpleNamespace(privacy="cloud"))
    return SimpleNamespace(served=served, restorer=restorer, usage=usage, deployment="up")


def upstream(body: dict[str, Any], reply: str = "Hello from the fake", finish: str = "stop") -> Answer:
    full = {"model": "gpt-up", "input": "hi", "store": False, **body}
    return Answer(full, chat_view(full), Reply(reply, len(reply.split()), finish, 4), serial=7)


def valid_response(obj: dict[str, Any]) -> Response:
    known = {f.alias or name for name, f in Response.model_fields.items()} | KNOWN_TO_API
    assert set(obj) <= known, "a field the SDK does not know"
    return Response.model_validate(obj)


def relay(r: NativeRenderer, events: list[bytes], c: Any, *, error: Exception | None = None) -> list[dict[str, Any]]:
    """Relay upstream events; every event out is checked against the SDK's types, order and framing."""
    framed = b"".join(r.chunk(c, e.split(b"\ndata: ", 1)[1].strip()) for e in events)
    framed += r.end(c) if error is None else r.error(c, error)  # type: ignore[arg-type]
    out = []
    for block in framed.decode().split("\n\n")[:-1]:
        head, data = block.split("\n")
        event = msgspec.json.decode(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        EVENTS.validate_python(event)
        out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    for event in out:
        state.handle_event(EVENTS.validate_python(event))
    return out


# --- unary -------------------------------------------------------------------------------


def test_a_native_response_becomes_the_gateways() -> None:
    r = renderer(
        instructions="Be brief.", metadata={"k": "v"}, max_output_tokens=50, previous_response_id="resp_gw0", tools=[{"type": "web_search"}]
    )
    answer = upstream(
        {"instructions": "Be brief.", "max_output_tokens": 64, "tools": [{"type": "web_search"}], "reasoning": {"summary": "auto"}}
    )
    body = r.unary(ctx(), msgspec.json.encode(answer.body_json(True)))
    response = valid_response(msgspec.json.decode(body))
    assert (response.id, response.model, response.created_at) == ("resp_gw1", "alias", 1_700_000_000)
    assert (response.metadata, response.max_output_tokens, response.previous_response_id) == ({"k": "v"}, 50, "resp_gw0")
    assert msgspec.json.decode(body)["store"] is True
    assert [i.type for i in response.output] == ["reasoning", "web_search_call", "message"]
    assert response.output_text == "Hello from the fake"
    assert response.usage is not None and response.usage.output_tokens == 4 + 3
    assert r.final == msgspec.json.decode(body)


def test_placeholders_in_a_native_response_get_their_values_back() -> None:
    r = renderer(tools=[WEATHER])
    restorer = Restorer({"<EMAIL_ADDRESS_1>": EMAIL})
    answer = upstream({}, reply="Mail <EMAIL_ADDRESS_1> now")
    response = msgspec.json.decode(r.unary(ctx(restorer=restorer), msgspec.json.encode(answer.body_json(True))))
    assert response["output"][0]["content"][0]["text"] == f"Mail {EMAIL} now"


def test_a_body_that_is_no_response_is_an_upstream_error() -> None:
    try:
        renderer().unary(ctx(), b'{"choices": []}')
    except UpstreamError as exc:
        assert "not a Response" in exc.message
    else:
        raise AssertionError("relayed a body that is no Response")


# --- streams -------------------------------------------------------------------------------


def test_a_native_stream_is_relayed_in_order_as_the_gateways() -> None:
    r = renderer(reasoning={"summary": "auto"}, tools=[{"type": "web_search"}])
    answer = upstream({"reasoning": {"summary": "auto"}, "tools": [{"type": "web_search"}]})
    events = relay(r, answer.events(True), ctx())
    assert len(events) == len(answer.events(True))
    responses = [e["response"] for e in events if "response" in e]
    assert {(x["id"], x["model"], x["store"]) for x in responses} == {("resp_gw1", "alias", True)}
    assert events[-1]["type"] == "response.completed" and r.final == events[-1]["response"]
    final = valid_response(events[-1]["response"])
    assert [i.type for i in final.output] == ["reasoning", "web_search_call", "message"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == final.output_text


def test_a_placeholder_split_over_deltas_is_held_until_whole() -> None:
    r = renderer()
    restorer = Restorer({"<EMAIL_ADDRESS_1>": EMAIL})
    text = "Write <EMAIL_ADDRESS_1> today"  # pieces of 4 characters split the placeholder
    events = relay(r, upstream({}, reply=text).events(True), ctx(restorer=restorer))
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == f"Write {EMAIL} today"
    assert all("<" not in d for d in deltas)
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["text"] == f"Write {EMAIL} today"
    assert valid_response(events[-1]["response"]).output_text == f"Write {EMAIL} today"


def test_a_failure_mid_stream_closes_what_is_open_then_fails() -> None:
    r = renderer()
    events = relay(r, upstream({}).events(True)[:6], ctx(), error=UpstreamError("deployment up failed mid-stream: boom"))
    kinds = [e["type"] for e in events]
    assert kinds[-6:] == [
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "error", "response.failed",
    ]  # fmt: skip
    failed = valid_response(events[-1]["response"])
    assert (failed.id, failed.status) == ("resp_gw1", "failed")
    assert failed.output[0].status == "incomplete" and failed.output_text == "Hello fr"  # type: ignore[union-attr]
    assert r.final is None, "a failed response is not stored"


def test_a_stream_the_budget_cuts_off_ends_incomplete_with_the_metered_usage() -> None:
    r = renderer(tools=[WEATHER])
    events = upstream({"tools": [WEATHER]}).events(True)[:4]  # created, in progress, the call added, its first arguments
    cut_off = b'data: {"id":"chatcmpl-r","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
    out = relay(r, [*events, b"event: x\ndata: " + cut_off[6:]], ctx(usage=Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5)))
    assert [e["type"] for e in out[-3:]] == ["response.function_call_arguments.done", "response.output_item.done", "response.incomplete"]
    final = valid_response(out[-1]["response"])
    assert final.incomplete_details is not None and final.incomplete_details.reason == "max_output_tokens"
    assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (2, 3)
    assert r.final == out[-1]["response"]


def test_a_translated_fallback_is_rendered_from_chat() -> None:
    r = renderer()
    envelope = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    chunks = chat_events(envelope, Reply("Hello from the", 3, "stop"), None, 4, True)[:-1]
    events = relay(r, [b"event: chunk\n" + c for c in chunks], ctx(native=False))
    assert events[-1]["type"] == "response.completed"
    assert valid_response(events[-1]["response"]).output_text == "Hello from the"
    assert r.final == events[-1]["response"]
