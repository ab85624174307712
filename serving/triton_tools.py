"""Tools and JSON answers on Triton: what a request asks of the model, and the prompt text for tool turns.

Triton's LLM backends take one prompt string, so the gateway does what a chat
template would: tool definitions, earlier calls and their results are written
into the prompt (``serving.triton_prompt``) in the Hermes format that Qwen 2.5+,
Hermes and other ChatML models are trained on::

    <|im_start|>system
    Be brief.

    # Tools
    ... <tools>
    {"type": "function", "function": {...}}
    </tools> ...<|im_end|>
    <|im_start|>assistant
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Oslo"}}
    </tool_call><|im_end|>
    <|im_start|>user
    <tool_response>
    {"temp": 3}
    </tool_response><|im_end|>

With ``tool_choice`` auto the model's ``<tool_call>`` regions are read back by
``serving.tool_call_hermes``. A forced call (required, or a named function) is
decoded under ``serving.structured_outputs.forced_call_schema`` through the
deployment's structured outputs and read back by ``ForcedCalls``; with
``tool_choice`` none the tools are left out of the prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, TypeAlias

from core.errors import InvalidRequest
from serving.base import JsonObject, Kind
from serving.structured_outputs import JsonConstraint, forced_call_schema, response_constraint, tool_plan
from serving.tool_call_hermes import HermesCalls
from serving.tool_call_text import ForcedCalls, ToolOutput
from serving.triton_guides import Guide, StructuredVia, guide_for

ToolParser: TypeAlias = Literal["hermes"]

_TOOLS_INTRO = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_OUTRO = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within"
    ' <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """What one request asks of the model beyond free text."""

    # Function tools to show in the prompt; None: none.
    tools: list[JsonObject] | None = None
    # The constraint to decode under, in the backend's form.
    guide: Guide | None = None
    # How tool calls are read back from the text; None: it is all content.
    reader: ToolOutput | None = None


def output_plan(kind: Kind, body: JsonObject, structured: StructuredVia, tool_parser: ToolParser | None) -> OutputPlan:
    """``tools``, ``tool_choice`` and ``response_format`` checked together, before anything is sent."""
    answer = response_constraint(body)
    if kind != "chat" and body.get("tools"):
        raise InvalidRequest("tools apply to chat completions only", param="tools")
    plan = tool_plan(body) if kind == "chat" else None
    if plan is None or plan.mode == "none":
        return OutputPlan(guide=guide_for(answer, structured))
    if tool_parser is None:
        raise InvalidRequest("tools are not supported by this deployment (options.tool_parser is none)", param="tools")
    if plan.mode == "forced":
        # The call replaces this turn's text answer; response_format shapes a later one.
        constraint = JsonConstraint(schema=forced_call_schema(plan), param="tool_choice")
        return OutputPlan(tools=plan.tools, guide=guide_for(constraint, structured), reader=ForcedCalls())
    return OutputPlan(tools=plan.tools, guide=guide_for(answer, structured), reader=HermesCalls())


def tools_text(tools: list[JsonObject]) -> str:
    """The system prompt's tools section."""
    lines = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in tools)
    return _TOOLS_INTRO + lines + _TOOLS_OUTRO


def calls_text(calls: list[JsonObject]) -> str:
    """An assistant turn's calls (arguments as objects, see ``template_tool_calls``), one region each."""
    return "\n".join(
        "<tool_call>\n"
        + json.dumps({"name": call["function"]["name"], "arguments": call["function"]["arguments"]}, ensure_ascii=False)
        + "\n</tool_call>"
        for call in calls
    )


def response_text(content: str) -> str:
    """One tool result, as the model reads it in the user turn that follows its calls."""
    return f"<tool_response>\n{content}\n</tool_response>"
