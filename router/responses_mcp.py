"""A Responses request with ``mcp`` tools: the gateway lists the servers' tools, runs the model's calls, and loops.

The servers are resolved and checked first (``router.responses_mcp_plan``);
their tools are offered to the model as function tools. Each round is one chat call through
the whole pipeline (PII, routing, limits, budgets, the ledger); the model's
calls of MCP tools are run by the plugin (its grants, limits, PII, guardrails,
audit) and their results go back to the model, until it answers, calls a
function tool of the client's (returned as a ``function_call`` for the client
to run), or asks for a call that needs approval (an ``mcp_approval_request``;
the client answers it with an ``mcp_approval_response`` in a request that
continues this one). At most ``MAX_ROUNDS`` model calls; the last is asked
not to call tools.

``McpRun.steps`` yields each output item as it is opened and as it is
finished; the unary answer keeps the finished ones
(``router.responses_mcp_stream`` frames them as events for a stream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from core.errors import UpstreamError
from router.chat_read import UNREADABLE, ChatUsage, Choice, Function, Message, decode_completion
from router.context import RequestContext
from router.gateway import Gateway
from router.responses_mcp_plan import McpServer, function_names
from router.responses_render import INCOMPLETE, JsonObject, ResponseHead, call_item, message_item, output_text, refusal, usage_object
from router.responses_surface import responses_body, translated
from router.responses_wire import ResponsesRequest
from router.unary import new_request_id, serve_unary

log = logging.getLogger("sluicegate.responses.mcp")
MAX_ROUNDS = 8
# A step of the run: ("added" | "done", output index, the item as it stands).
Step = tuple[str, int, JsonObject]
_decode_arguments = msgspec.json.Decoder(dict[str, Any]).decode


class McpRun:
    """One request's loop; ``final`` is the finished Response object once ``steps`` is exhausted."""

    def __init__(
        self, gateway: Gateway, common: dict[str, Any], request: ResponsesRequest, servers: list[McpServer],
        conversation: list[JsonObject], approvals: list[JsonObject], head: ResponseHead, headers: Mapping[str, str],
    ) -> None:  # fmt: skip
        self.final: JsonObject | None = None
        self.head = head
        # Model calls answered so far.
        self.answered = 0
        self._gateway = gateway
        self._common = common
        self._request = request
        self._servers = servers
        self._conversation = conversation  # the earlier conversation and this request's input
        self._approvals = approvals
        self._headers = headers
        self._rid = head.response_id.removeprefix("resp_")
        self._output: list[JsonObject] = []
        self._usage = ChatUsage()
        self._rounds = 0
        self._functions = function_names(servers, {t.name for t in request.tools or ()})
        traceparent = headers.get("traceparent")
        parts = traceparent.split("-") if traceparent is not None else []
        self._trace_id = parts[1] if len(parts) == 4 else None

    async def unary(self) -> JsonObject:
        """Run the loop to its end: the Response object."""
        async for _ in self.steps():
            pass
        assert self.final is not None
        return self.final

    async def steps(self) -> AsyncIterator[Step]:
        listed = {i["server_label"] for i in self._conversation if i["type"] == "mcp_list_tools"}
        for server in self._servers:
            if server.label not in listed:
                for step in self._add(_list_item(self._id("mcpl"), server)):
                    yield step
        if self._approvals:
            async for step in self._run_calls([(request, request["id"]) for request in self._approvals]):
                yield step
        finish: str | None = None
        for round_ in range(MAX_ROUNDS):
            message, finish = await self._model(last=round_ == MAX_ROUNDS - 1)
            parts = ([output_text(message.content)] if message.content else []) + ([refusal(message.refusal)] if message.refusal else [])
            if parts:
                status = "incomplete" if finish in INCOMPLETE else "completed"
                for step in self._add(message_item(self._id("msg"), parts, status)):
                    yield step
            calls, stop = self._classify(message)
            for step in stop:
                yield step
            if calls:
                async for step in self._run_calls([(call, None) for call in calls]):
                    yield step
            if stop or not calls:
                break
        usage = usage_object(self._usage) if self._usage.total_tokens else None
        self.final = self.head.response("completed", list(self._output), usage, finish=finish)

    # --- one model round ------------------------------------------------------------------

    async def _model(self, *, last: bool) -> tuple[Message, str | None]:
        body = responses_body(self._request, [*self._conversation, *self._output])
        tools = list(body.get("tools") or ())
        for name, (_, spec) in self._functions.items():
            function = {"type": "function", "name": name, "parameters": spec.input_schema}
            tools.append(function if spec.description is None else {**function, "description": spec.description})
        if tools:
            body["tools"] = tools
        if last and self._functions:
            body["tool_choice"] = "none"  # the last round must answer
        now = time.perf_counter()
        fields = {**self._common, "stream": False, "include_usage": False}
        if self._rounds:  # the first round is the request the client made; each later one is a request of its own
            fields.update(request_id=new_request_id(), started=now, authenticated=now)
        self._rounds += 1
        ctx = RequestContext(kind="chat", body=self._renamed(translated(body)), **fields)
        ctx.client_headers = self._headers
        outcome = await serve_unary(self._gateway.pipeline, ctx, log, self._headers.get("traceparent"))
        if outcome.error is not None:
            raise outcome.error
        self.answered += 1
        try:
            completion = decode_completion(outcome.body)
        except UNREADABLE:
            raise UpstreamError(f"deployment {ctx.deployment} returned a completion the Responses API cannot express") from None
        usage = completion.usage
        if usage is not None:
            self._usage.prompt_tokens += usage.prompt_tokens
            self._usage.completion_tokens += usage.completion_tokens
            self._usage.total_tokens += usage.total_tokens or usage.prompt_tokens + usage.completion_tokens
        elif ctx.usage is not None:
            self._usage.prompt_tokens += ctx.usage.prompt_tokens
            self._usage.completion_tokens += ctx.usage.completion_tokens
            self._usage.total_tokens += ctx.usage.prompt_tokens + ctx.usage.completion_tokens
        choice = completion.choices[0] if completion.choices else Choice()
        return choice.message or Message(), choice.finish_reason

    def _renamed(self, chat: JsonObject) -> JsonObject:
        """Earlier MCP calls in the chat messages under the function names the model is offered now."""
        offered = {(server.label, spec.name): name for name, (server, spec) in self._functions.items()}
        names = {
            item["id"]: offered[key]
            for item in (*self._conversation, *self._output)
            if item["type"] in ("mcp_call", "mcp_approval_request") and (key := (item["server_label"], item["name"])) in offered
        }
        for message in chat["messages"] if names else ():
            for call in message.get("tool_calls") or ():
                if call["id"] in names:
                    call["function"]["name"] = names[call["id"]]
        return chat

    def _classify(self, message: Message) -> tuple[list[JsonObject], list[Step]]:
        """The model's MCP calls to run now; and the items that end the loop (client calls, approval requests)."""
        run: list[JsonObject] = []
        stop: list[Step] = []
        for n, call in enumerate(message.tool_calls or ()):
            function = call.function or Function()
            name, arguments = function.name or "", function.arguments or ""
            target = self._functions.get(name)
            if target is None:  # the client's own function (or one the model made up): the client's to answer
                call_id = call.id or f"call_{self._rid}_{self._rounds}_{n}"
                stop.extend(self._add(call_item(self._id("fc"), call_id, name, arguments, "completed")))
                continue
            server, spec = target
            item = {"type": "mcp_call", "server_label": server.label, "name": spec.name, "arguments": arguments}
            if server.tool.needs_approval(spec.name, spec.annotations):
                stop.extend(self._add({**item, "type": "mcp_approval_request", "id": self._id("mcpr")}))
            else:
                run.append(item)
        return run, stop

    async def _run_calls(self, calls: list[tuple[JsonObject, str | None]]) -> AsyncIterator[Step]:
        """Open an ``mcp_call`` item per call, run them together, and finish each with its result."""
        opened: list[tuple[int, JsonObject]] = []
        for call, approval in calls:
            item = {
                "type": "mcp_call", "id": self._id("mcp"), "server_label": call["server_label"], "name": call["name"],
                "arguments": call["arguments"], "output": None, "error": None, "status": "in_progress", "approval_request_id": approval,
            }  # fmt: skip
            index = len(self._output)
            self._output.append(item)
            opened.append((index, item))
            yield "added", index, dict(item)
        results = await asyncio.gather(*(self._call(item) for _, item in opened))
        for (index, item), done in zip(opened, results):
            item.update(done)
            yield "done", index, item

    async def _call(self, item: JsonObject) -> JsonObject:
        server = next(s for s in self._servers if s.label == item["server_label"])
        try:
            arguments = _decode_arguments(item["arguments"] or "{}")
        except (msgspec.DecodeError, msgspec.ValidationError):
            error = {"type": "mcp_protocol_error", "code": -32602, "message": "The tool call's arguments are not a JSON object."}
            return {"status": "failed", "error": error}
        result = await server.provider.call_tool(self._common["principal"], server.label, item["name"], arguments, trace_id=self._trace_id)
        if result.is_error:
            return {"status": "failed", "error": {"type": "mcp_tool_execution_error", "content": [{"type": "text", "text": result.output}]}}
        return {"status": "completed", "output": result.output}

    # --- output items -------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{self._rid}_{len(self._output)}"

    def _add(self, item: JsonObject) -> list[Step]:
        """A finished item: opened and done at once."""
        index = len(self._output)
        self._output.append(item)
        return [("added", index, item), ("done", index, item)]


def _list_item(item_id: str, server: McpServer) -> JsonObject:
    tools = [
        {"name": s.name, "input_schema": s.input_schema, "description": s.description, "annotations": s.annotations}
        for s in server.tools.values()
    ]
    return {"type": "mcp_list_tools", "id": item_id, "server_label": server.label, "tools": tools, "error": server.listing.error}
