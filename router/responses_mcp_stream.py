"""A Responses request with ``mcp`` tools, streamed: each step of ``McpRun`` as the API's typed events.

``response.created`` and ``response.in_progress`` first; then per output item
``response.output_item.added``, the events of its kind, and
``response.output_item.done``: ``response.mcp_list_tools.in_progress`` /
``completed`` (``failed`` when the server could not list), for a call
``response.mcp_call_arguments.delta`` / ``done`` and
``response.mcp_call.in_progress`` when it starts, ``response.mcp_call.completed``
(or ``failed``) when it ends; a message's text in one delta; a function call's
arguments in one delta. Then ``response.completed``. Nothing is sent until the
first model call has answered: a failure before it is raised, for the route to
answer as an HTTP error; one after it is an ``error`` event and
``response.failed``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from core.errors import GatewayError, InternalError
from router.responses_mcp import McpRun
from router.responses_render import EventWriter, JsonObject, failure

log = logging.getLogger("sluicegate.responses.mcp")


class McpEvents(EventWriter):
    """The events of one run; ``final`` is the run's Response object once it is finished."""

    def __init__(self, run: McpRun) -> None:
        super().__init__()
        self._run = run
        self._output: dict[int, JsonObject] = {}

    @property
    def final(self) -> JsonObject | None:
        return self._run.final

    async def stream(self) -> AsyncIterator[bytes]:
        head = self._run.head
        self._emit("response.created", response=head.response("in_progress", []))
        self._emit("response.in_progress", response=head.response("in_progress", []))
        try:
            async for phase, index, item in self._run.steps():
                if phase == "added":
                    self._added(index, item)
                else:
                    self._done(index, item)
                    self._output[index] = item
                if self._run.answered:
                    yield self._flush()
        except Exception as exc:
            if not self._run.answered:
                raise  # nothing sent yet: the route's own error answer
            if not isinstance(exc, GatewayError):  # the stream has begun: a failed response, never a cut connection
                log.error("an mcp run failed unexpectedly: %s", type(exc).__name__, exc_info=exc)
                exc = InternalError("The gateway failed to process the request.")
            yield self._failed(exc)
            return
        final = self._run.final
        assert final is not None
        self._emit("response.completed", response=final)
        yield self._flush()

    def _failed(self, exc: GatewayError) -> bytes:
        self._emit("error", code=exc.code, message=exc.message, param=exc.param)
        output = [self._output[i] for i in sorted(self._output)]
        self._emit("response.failed", response=self._run.head.response("failed", output, error=failure(exc)))
        return self._flush()

    # --- per kind of item ---------------------------------------------------------------

    def _added(self, index: int, item: JsonObject) -> None:
        kind = item["type"]
        where: dict[str, Any] = {"item_id": item["id"], "output_index": index}
        self._emit("response.output_item.added", output_index=index, item=_opened(item))
        if kind == "mcp_list_tools":
            self._emit("response.mcp_list_tools.in_progress", **where)
        elif kind == "mcp_call":
            self._emit("response.mcp_call_arguments.delta", **where, delta=item["arguments"])
            self._emit("response.mcp_call_arguments.done", **where, arguments=item["arguments"])
            self._emit("response.mcp_call.in_progress", **where)
        elif kind == "message":
            for n, part in enumerate(item["content"]):
                self._part(where, n, part)
        elif kind == "function_call":
            self._emit("response.function_call_arguments.delta", **where, delta=item["arguments"])
            self._emit("response.function_call_arguments.done", **where, arguments=item["arguments"])

    def _part(self, where: dict[str, Any], n: int, part: JsonObject) -> None:
        text = part["text"] if part["type"] == "output_text" else part["refusal"]
        empty = {**part, "text": ""} if part["type"] == "output_text" else {**part, "refusal": ""}
        self._emit("response.content_part.added", **where, content_index=n, part=empty)
        if part["type"] == "output_text":
            self._emit("response.output_text.delta", **where, content_index=n, delta=text, logprobs=[])
            self._emit("response.output_text.done", **where, content_index=n, text=text, logprobs=[])
        else:
            self._emit("response.refusal.delta", **where, content_index=n, delta=text)
            self._emit("response.refusal.done", **where, content_index=n, refusal=text)
        self._emit("response.content_part.done", **where, content_index=n, part=part)

    def _done(self, index: int, item: JsonObject) -> None:
        kind = item["type"]
        where: dict[str, Any] = {"item_id": item["id"], "output_index": index}
        if kind == "mcp_list_tools":
            ended = "failed" if item.get("error") else "completed"
            self._emit(f"response.mcp_list_tools.{ended}", **where)
        elif kind == "mcp_call":
            ended = "failed" if item["status"] == "failed" else "completed"
            self._emit(f"response.mcp_call.{ended}", **where)
        self._emit("response.output_item.done", output_index=index, item=item)


def _opened(item: JsonObject) -> JsonObject:
    """The item as ``output_item.added`` shows it: begun, nothing in it yet."""
    kind = item["type"]
    if kind == "message":
        return {**item, "content": [], "status": "in_progress"}
    if kind == "function_call":
        return {**item, "arguments": "", "status": "in_progress"}
    if kind == "mcp_list_tools":
        return {**item, "tools": []}
    if kind == "mcp_call":
        return {**item, "output": None, "error": None, "status": "in_progress"}
    return item
