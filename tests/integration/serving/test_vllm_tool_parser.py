"""tool_choice auto on vLLM: crafted model text read by vLLM's Hermes parser, through the engine's output encoders.

Random weights never write ``<tool_call>``, so the text is crafted and fed to
the same code the engine runs on its outputs: ``final_completion`` for whole
responses and ``StreamEncoder`` for streams, with vLLM's own parser behind them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from serving.vllm_engine import VLLMEngine
from serving.vllm_output import ResponseMeta, StreamEncoder, final_completion
from serving.vllm_tools import ParsedToolCalls, load_tool_parser
from tests.integration.serving.structured_cases import streamed_calls, weather_tools

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOOLS = weather_tools(integer_bounds=False)
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 2}}</tool_call>'
TEXT = "Let me check. " + CALL


def _parsed(engine: VLLMEngine) -> ParsedToolCalls:
    assert engine._tool_parser is not None and engine._tokenizer is not None
    return ParsedToolCalls(engine._tool_parser, engine._tokenizer, TOOLS)


def _meta(tools: ParsedToolCalls) -> ResponseMeta:
    return ResponseMeta(kind="chat", response_id="chatcmpl-t", model="m", created=0, n=1, top_logprobs=None, tools=tools)


def _output(text: str, token_ids: list[int], reason: str | None) -> Any:
    from vllm.outputs import CompletionOutput, RequestOutput

    output = CompletionOutput(index=0, text=text, token_ids=token_ids, cumulative_logprob=None, logprobs=None, finish_reason=reason)
    return RequestOutput("r", None, [1, 2], None, [output], finished=reason is not None)


async def test_hermes_parser_keeps_special_tokens(vllm_engine: VLLMEngine) -> None:
    # Hermes models mark calls with special tokens, which detokenizing would otherwise drop.
    assert _parsed(vllm_engine).skip_special_tokens is False


async def test_whole_response_carries_the_parsed_call(vllm_engine: VLLMEngine) -> None:
    body = json.loads(final_completion(_meta(_parsed(vllm_engine)), [_output(TEXT, [5] * 9, "stop")], 2).body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Let me check. "
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "celsius", "days": 2}


async def test_plain_text_stays_content(vllm_engine: VLLMEngine) -> None:
    body = json.loads(final_completion(_meta(_parsed(vllm_engine)), [_output("Just text.", [5, 6], "stop")], 2).body)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "Just text."}


@pytest.mark.parametrize("piece", [1, 4, 25], ids=["char", "small", "large"])
async def test_stream_relays_content_then_call_deltas(vllm_engine: VLLMEngine, piece: int) -> None:
    encoder = StreamEncoder(_meta(_parsed(vllm_engine)), prompt_tokens=2)
    pieces = [TEXT[start : start + piece] for start in range(0, len(TEXT), piece)]
    chunks = []
    for number, text in enumerate(pieces):
        last = number == len(pieces) - 1
        chunks += encoder.feed(0, _output(text, [5], "stop" if last else None))
    calls, content, reasons = streamed_calls(chunks)
    assert content.strip() == "Let me check."
    assert reasons == ["tool_calls"]
    [call] = calls
    assert call["name"] == "get_weather" and call["id"]
    assert json.loads(call["arguments"]) == {"city": "Paris", "unit": "celsius", "days": 2}
    # The relay meters only content as text.
    assert "".join(chunk.text or "" for chunk in chunks) == content


async def test_unknown_or_misfit_parser_fails_at_start(vllm_engine: VLLMEngine) -> None:
    assert vllm_engine._tokenizer is not None
    with pytest.raises(ValueError, match="unknown tool_parser"):
        load_tool_parser("no-such-parser", vllm_engine._tokenizer)
    # llama3_json looks for <|python_tag|>, which the tiny vocabulary lacks.
    with pytest.raises(ValueError, match="does not fit"):
        load_tool_parser("llama3_json", vllm_engine._tokenizer)
