"""The loop of a Responses request with ``mcp`` tools, with the pipeline replaced by scripted model answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest

from core.errors import RateLimited
from core.plugin import ToolListing, ToolResult, ToolSpec
from core.principal import Principal
from router import responses_mcp
from router.responses_mcp import MAX_ROUNDS, McpRun
from router.responses_mcp_plan import McpServer
from router.responses_mcp_stream import McpEvents
from router.responses_mcp_wire import McpTool
from router.responses_render import ResponseHead
from router.responses_wire import FunctionTool, ResponsesRequest
from router.unary import Outcome

ACME = Principal(tenant="acme", key_id="k")


class _Provider:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def list_tools(self, principal: Principal, server_label: str) -> ToolListing | None:
        return None

    async def call_tool(
        self, principal: Principal, server_label: str, name: str, arguments: dict[str, Any], *, trace_id: str | None = None
    ) -> ToolResult:
        self.calls.append((name, arguments))
        return ToolResult(output=f"{name} result")


def _completion(content: str | None = None, calls: Sequence[tuple[str, str]] = ()) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}} for i, (n, a) in enumerate(calls)
        ]
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    return msgspec.json.encode({"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": message}], "usage": usage})


class _Script:
    """Model answers in order (the last one repeated); the chat bodies it was sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *answers: bytes | Exception) -> None:
        self.answers = list(answers)
        self.bodies: list[dict[str, Any]] = []
        monkeypatch.setattr(responses_mcp, "serve_unary", self)

    async def __call__(self, pipeline: object, ctx: Any, log: object, traceparent: str | None = None) -> Outcome:
        self.bodies.append(ctx.body)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            return Outcome(429, b"{}", ctx.request_id, answer)  # type: ignore[arg-type]
        return Outcome(200, answer, ctx.request_id)


class _Gateway:
    pipeline = None


def _run(provider: _Provider, approval: str = "never", functions: tuple[str, ...] = ()) -> McpRun:
    tool = msgspec.convert({"type": "mcp", "server_label": "docs", "require_approval": approval}, McpTool)
    specs = {n: ToolSpec(name=n, input_schema={"type": "object"}) for n in ("search", "lookup")}
    server = McpServer(tool, provider, ToolListing(tools=list(specs.values())), specs)
    request = ResponsesRequest(model="m", input="hi", tools=[FunctionTool(name=f) for f in functions] or None)
    common = {"request_id": "r1", "snapshot": None, "principal": ACME, "route": "responses", "alias": "m", "stream": False}
    conversation = [
        {"type": "message", "id": "m0", "role": "user", "content": [{"type": "input_text", "text": "hi"}], "status": "completed"}
    ]
    head = ResponseHead("resp_r1", 0, "m", {})
    return McpRun(_Gateway(), common, request, [server], conversation, [], head, {})  # type: ignore[arg-type]


async def test_a_call_and_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _Script(monkeypatch, _completion(calls=[("search", '{"q": "x"}')]), _completion("done"))
    provider = _Provider()
    final = await _run(provider).unary()
    assert [i["type"] for i in final["output"]] == ["mcp_list_tools", "mcp_call", "message"]
    assert final["output"][1]["output"] == "search result" and provider.calls == [("search", {"q": "x"})]
    assert final["usage"]["total_tokens"] == 10
    offered = [t["function"]["name"] for t in script.bodies[0]["tools"]]
    assert offered == ["search", "lookup"]
    assert script.bodies[1]["messages"][-1] == {"role": "tool", "tool_call_id": final["output"][1]["id"], "content": "search result"}


async def test_a_taken_name_is_offered_prefixed_and_kept_so_in_the_history(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _Script(monkeypatch, _completion(calls=[("docs__lookup", "{}")]), _completion("done"))
    provider = _Provider()
    final = await _run(provider, functions=("lookup",)).unary()
    assert provider.calls == [("lookup", {})] and final["output"][1]["name"] == "lookup"
    assert "docs__lookup" in [t["function"]["name"] for t in script.bodies[0]["tools"]]
    assistant = script.bodies[1]["messages"][-2]
    assert assistant["tool_calls"][0]["function"]["name"] == "docs__lookup"


async def test_the_loop_is_bounded_and_the_last_round_may_not_call_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _Script(monkeypatch, _completion(calls=[("search", "{}")]))
    provider = _Provider()
    await _run(provider).unary()
    assert len(script.bodies) == MAX_ROUNDS
    assert script.bodies[-1]["tool_choice"] == "none" and "tool_choice" not in script.bodies[0]


async def test_approval_ends_the_response_and_a_client_function_is_the_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    _Script(monkeypatch, _completion(calls=[("search", "{}"), ("mine", "{}")]))
    provider = _Provider()
    final = await _run(provider, approval="always", functions=("mine",)).unary()
    assert [i["type"] for i in final["output"]] == ["mcp_list_tools", "mcp_approval_request", "function_call"]
    assert provider.calls == []


async def test_bad_arguments_fail_the_call_and_not_the_response(monkeypatch: pytest.MonkeyPatch) -> None:
    _Script(monkeypatch, _completion(calls=[("search", "not json")]), _completion("sorry"))
    provider = _Provider()
    final = await _run(provider).unary()
    call = final["output"][1]
    assert call["status"] == "failed" and call["error"]["type"] == "mcp_protocol_error" and provider.calls == []


async def test_a_model_error_is_the_responses_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _Script(monkeypatch, RateLimited("slow down"))
    with pytest.raises(RateLimited):
        await _run(_Provider()).unary()


async def _events(run: McpRun) -> list[dict[str, Any]]:
    out = []
    async for chunk in McpEvents(run).stream():
        for frame in chunk.decode().split("\n\n"):
            if frame:
                out.append(msgspec.json.decode(frame.split("\ndata: ", 1)[1]))
    return out


async def test_a_stream_sends_each_item_as_it_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    _Script(monkeypatch, _completion(calls=[("search", "{}")]), _completion("done"))
    events = await _events(_run(_Provider()))
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert (
        kinds.index("response.mcp_call.in_progress")
        < kinds.index("response.mcp_call.completed")
        < kinds.index("response.output_text.delta")
    )
    assert kinds[-1] == "response.completed" and [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [i["type"] for i in events[-1]["response"]["output"]] == ["mcp_list_tools", "mcp_call", "message"]


async def test_a_stream_that_fails_before_the_first_answer_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    _Script(monkeypatch, RateLimited("slow down"))
    with pytest.raises(RateLimited):
        await anext(McpEvents(_run(_Provider())).stream())


async def test_a_stream_that_fails_later_ends_with_a_failed_response(monkeypatch: pytest.MonkeyPatch) -> None:
    _Script(monkeypatch, _completion(calls=[("search", "{}")]), RateLimited("slow down"))
    events = await _events(_run(_Provider()))
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "rate_limit_exceeded"
    assert [i["type"] for i in failed["output"]] == ["mcp_list_tools", "mcp_call"]
