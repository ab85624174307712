"""Tools and JSON answers on Triton: prompt text, output plans and the backends' constraint forms."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from core.errors import InvalidRequest, UpstreamError, UpstreamRejected
from serving.registry import ProviderError, parse_options
from serving.structured_outputs import JsonConstraint, forced_call_schema, tool_plan
from serving.tool_call_hermes import HermesCalls
from serving.tool_call_text import ForcedCalls
from serving.triton import TritonOptions
from serving.triton_errors import in_band_error
from serving.triton_guides import Guide, check_schema, guide_for
from serving.triton_prompt import render_prompt, sampling_settings
from serving.triton_tools import output_plan

WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER_PARAMS}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"]}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
ROUND_TRIP = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo and Rome?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [CALL, {**CALL, "id": "call_2", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": '{"temp": 20}'}]},
]


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


# --- prompt text ------------------------------------------------------------------------


def test_chatml_prompt_carries_tools_calls_and_results() -> None:
    prompt = render_prompt("chat", {"messages": ROUND_TRIP}, "chatml", [WEATHER, CLOCK])
    system, user, assistant, results, generation = prompt.split("<|im_start|>")[1:]
    assert system.startswith("system\nBe brief.\n\n# Tools\n")
    lines = system.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0].splitlines()
    assert [json.loads(line) for line in lines] == [WEATHER, CLOCK]
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' in system
    assert user == "user\nWeather in Oslo and Rome?<|im_end|>\n"
    # Calls as the model writes them, arguments as objects.
    assert assistant == (
        'assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
    )
    # Consecutive results: one user turn.
    assert results == 'user\n<tool_response>\n{"temp": 3}\n</tool_response>\n<tool_response>\n{"temp": 20}\n</tool_response><|im_end|>\n'
    assert generation == "assistant\n"


def test_tools_without_a_system_message_get_their_own_turn() -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]}]
    prompt = render_prompt("chat", {"messages": messages}, "chatml", [WEATHER])
    assert prompt.startswith("<|im_start|>system\n# Tools\n")
    assert (
        '<|im_start|>assistant\nLet me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
        in prompt
    )


def test_plain_prompt_carries_tools_too() -> None:
    prompt = render_prompt("chat", {"messages": ROUND_TRIP[:4]}, "plain", [WEATHER])
    assert prompt.startswith("system: Be brief.\n\n# Tools\n")
    assert "\nassistant: <tool_call>\n" in prompt
    assert prompt.endswith('user: <tool_response>\n{"temp": 3}\n</tool_response>\nassistant:')


def test_prompt_without_tools_is_unchanged() -> None:
    messages = [{"role": "developer", "content": "Rules."}, {"role": "user", "content": "hi"}]
    assert render_prompt("chat", {"messages": messages}, "chatml") == (
        "<|im_start|>system\nRules.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "tool", "content": "x"}, "messages.1.tool_call_id"),
        ({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}]}, "messages.1"),
        ({"role": "assistant", "tool_calls": "f()"}, "messages.1"),
    ],
)
def test_bad_tool_turns_are_400s(message: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        render_prompt("chat", {"messages": [{"role": "user", "content": "hi"}, message]}, "chatml", [WEATHER])
    assert caught.value.param == param


def test_tools_no_longer_refused_by_sampling_settings() -> None:
    assert sampling_settings({"tools": [WEATHER]}, 16).max_tokens == 16


# --- output plans ---------------------------------------------------------------------------


def test_auto_tools_are_shown_and_read_the_hermes_way() -> None:
    plan = output_plan("chat", {"tools": [WEATHER]}, "none", "hermes")
    assert plan.tools == [WEATHER] and plan.guide is None and isinstance(plan.reader, HermesCalls)


def test_tool_choice_none_leaves_tools_out() -> None:
    plan = output_plan("chat", {"tools": [WEATHER], "tool_choice": "none"}, "none", None)
    assert plan.tools is None and plan.reader is None and plan.guide is None


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_calls_decode_under_the_call_schema(choice: object) -> None:
    body = {"tools": [WEATHER, CLOCK], "tool_choice": choice}
    plan = output_plan("chat", body, "vllm_backend", "hermes")
    expected = tool_plan(body)
    assert expected is not None
    assert plan.guide == Guide("vllm_backend", forced_call_schema(expected))
    assert isinstance(plan.reader, ForcedCalls) and plan.tools == [WEATHER, CLOCK]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": _json_schema(SCHEMA)}, "response_format"),
    ],
)
def test_constraints_without_structured_outputs_are_400s(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        output_plan("chat", body, "none", "hermes")
    assert caught.value.param == param
    assert "structured_outputs" in caught.value.message


def test_tools_without_a_parser_are_400s() -> None:
    with pytest.raises(InvalidRequest) as caught:
        output_plan("chat", {"tools": [WEATHER]}, "vllm_backend", None)
    assert caught.value.param == "tools"


def test_completions_take_response_format_only() -> None:
    plan = output_plan("completion", {"response_format": {"type": "json_object"}}, "trtllm", "hermes")
    assert plan == type(plan)(guide=Guide("trtllm", None))
    with pytest.raises(InvalidRequest) as caught:
        output_plan("completion", {"tools": [WEATHER]}, "trtllm", "hermes")
    assert caught.value.param == "tools"


# --- the backends' forms ---------------------------------------------------------------------


def test_vllm_backend_forms_are_json_strings() -> None:
    assert Guide("vllm_backend", SCHEMA).sampling_entries() == {"structured_outputs": json.dumps({"json": SCHEMA})}
    assert Guide("vllm_backend", None).sampling_entries() == {"structured_outputs": '{"json_object": true}'}
    assert Guide("vllm_backend_legacy", SCHEMA).sampling_entries() == {"guided_decoding": json.dumps({"json": SCHEMA})}
    settings = sampling_settings({"temperature": 0.5}, 8)
    sent = json.loads(settings.vllm_json(Guide("vllm_backend", SCHEMA).sampling_entries()))
    assert sent == {"max_tokens": 8, "temperature": 0.5, "structured_outputs": json.dumps({"json": SCHEMA})}


def test_trtllm_form_is_a_json_schema_guide() -> None:
    assert Guide("trtllm", SCHEMA).trtllm_inputs() == {
        "guided_decoding_guide_type": "json_schema",
        "guided_decoding_guide": json.dumps(SCHEMA),
    }
    assert json.loads(Guide("trtllm", None).trtllm_inputs()["guided_decoding_guide"]) == {"type": "object"}


def test_guide_for_checks_the_schema() -> None:
    assert guide_for(None, "none") is None
    assert guide_for(JsonConstraint(SCHEMA, "response_format"), "trtllm") == Guide("trtllm", SCHEMA)
    with pytest.raises(InvalidRequest, match="multipleOf") as caught:
        guide_for(JsonConstraint({"type": "integer", "multipleOf": 3}, "response_format"), "vllm_backend")
    assert caught.value.param == "response_format"


ENFORCED = {
    "type": "object",
    "title": "Person",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "when": {"type": "string", "format": "date-time"},
        "age": {"type": ["integer", "null"], "minimum": 0, "exclusiveMaximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
        "pet": {"anyOf": [{"$ref": "#/$defs/Pet"}, {"type": "null"}]},
        "pair": {"type": "array", "prefixItems": [{"type": "boolean"}, {"const": 1}]},
        "extra": {"type": "object", "additionalProperties": {"type": "number"}, "maxProperties": 2},
    },
    "required": ["name"],
    "additionalProperties": False,
    "$defs": {"Pet": {"type": "object", "properties": {"kind": {"type": "string"}}, "allOf": [{"required": ["kind"]}]}},
}


def test_enforceable_schema_passes() -> None:
    check_schema(ENFORCED, "response_format")


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "number", "multipleOf": 0.5}, "multipleOf"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "array", "contains": {"type": "string"}}, "contains"),
        ({"properties": {"a": {"not": {"type": "string"}}}}, "not"),
        ({"if": {"type": "string"}, "then": {"minLength": 1}}, "if"),
        ({"type": "string", "format": "credit-card"}, "format"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 4}, "maxLength"),
        ({"type": "object", "propertyNames": {"pattern": "^a"}, "properties": {"a": {}}}, "propertyNames"),
        ({"type": "object", "patternProperties": {"^a": {}, "^b": {}}}, "patternProperties"),
        ({"allOf": [{"type": "string"}, {"enum": ["yes", "no"]}]}, "allOf"),
        ({"$defs": {"X": {"type": "integer", "multipleOf": 2}}}, "multipleOf"),
        ({"items": [{"type": "string", "dependentRequired": {}}]}, "dependentRequired"),
    ],
)
def test_unenforceable_keywords_are_400s_naming_them(schema: dict[str, Any], keyword: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_schema(schema, "tool_choice")
    assert f"'{keyword}'" in caught.value.message and caught.value.param == "tool_choice"


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "https://example.com/schema.json"},
        {"type": "text"},
        {"type": {"oops": 1}},
        {"format": ["date"]},
        {"properties": []},
        {"properties": {"a": "string"}},
    ],
)
def test_malformed_schemas_are_400s(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        check_schema(schema, "response_format")


# --- options and errors -----------------------------------------------------------------------


def test_options_name_the_constraint_form() -> None:
    options = parse_options("triton", {"backend": "tensorrt_llm", "structured_outputs": "trtllm", "tool_parser": None})
    assert isinstance(options, TritonOptions)
    assert (options.structured_outputs, options.tool_parser) == ("trtllm", None)
    assert TritonOptions().structured_outputs == "none" and TritonOptions().tool_parser == "hermes"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"structured_outputs": "trtllm"}, "backend tensorrt_llm"),
        ({"backend": "tensorrt_llm", "structured_outputs": "vllm_backend"}, "backend vllm"),
        ({"structured_outputs": "outlines"}, "options.structured_outputs"),
        ({"tool_parser": "mistral"}, "options.tool_parser"),
    ],
)
def test_options_refuse_mismatched_forms(raw: dict[str, Any], named: str) -> None:
    with pytest.raises(ProviderError, match=named):
        parse_options("triton", raw)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(raw, TritonOptions)


def test_backend_constraint_failures_are_mapped() -> None:
    refused = in_band_error("Error generating stream: The provided JSON schema contains features not supported by xgrammar.")
    assert isinstance(refused, UpstreamRejected) and refused.status == 400
    unset = in_band_error(
        "[TensorRT-LLM][ERROR] Assertion failed: Request is specified with GuidedDecodingParams, but GuidedDecoder is not setup."
    )
    assert type(unset) is UpstreamError and "structured_outputs" in unset.message
    assert "xgrammar" not in refused.message
