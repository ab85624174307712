"""JSON answers and tool calls on TritonEngine, against the fake Triton (tests/fakes/triton_server.py).

The fake holds each request to the shapes the real vLLM and TensorRT-LLM
backends accept (tests/fakes/triton_checks.py) and answers under the
constraint it carries, so an answer the schema accepts shows the constraint
arrived in a form the backend reads.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import msgspec
import numpy as np
import pytest

from core.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamRejected
from serving.base import EngineRequest, StreamChunk
from serving.structured_outputs import forced_call_schema, tool_plan
from serving.triton import TritonEngine
from tests.fakes.triton_checks import NONE_PARAMS, WireError, check_llm
from tests.fakes.triton_server import ANY_JSON, TOOL_ANSWER, FakeTriton
from tests.integration.serving.structured_cases import json_schema_format, parameters_of, person_schema, streamed_calls, weather_tools
from tests.integration.test_triton_engine import make_engine

PERSON = person_schema(integer_bounds=True)
TOOLS = weather_tools(integer_bounds=True)
QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}]
VIA = {
    "vllm_backend": {},
    "vllm_backend_legacy": {},
    "trtllm": {"backend": "tensorrt_llm"},
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeTriton]:
    server = FakeTriton()
    await server.start()
    yield server
    await server.close()


async def started(fake: FakeTriton, model: str = "llm", **options: Any) -> TritonEngine:
    engine = make_engine(fake.target, model, **options)
    await engine.start()
    return engine


def chat(messages: list[dict[str, Any]] | None = None, **body: Any) -> EngineRequest:
    body = {"model": "llm", "messages": messages or QUESTION, "max_tokens": 400, **body}
    return EngineRequest(kind="chat", body=body, request_id="req-s")


async def collect(chunks: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [chunk async for chunk in chunks]


def content_of(chunks: list[StreamChunk]) -> str:
    return "".join(json.loads(chunk.data)["choices"][0]["delta"].get("content") or "" for chunk in chunks[:-1])


def sent_guide(fake: FakeTriton) -> tuple[str, Any]:
    """Where the last request carried its constraint, and the constraint as the backend reads it."""
    sent = fake.requests[-1]
    if "guided_decoding_guide_type" in sent.inputs:
        assert sent.inputs["guided_decoding_guide_type"] == ("BYTES", [1, 1], [b"json_schema"])
        assert sent.inputs["guided_decoding_guide"][:2] == ("BYTES", [1, 1])
        return "trtllm", {"json": json.loads(sent.value("guided_decoding_guide"))}
    sampling = json.loads(sent.value("sampling_parameters"))
    [key] = set(sampling) & {"structured_outputs", "guided_decoding"}
    # The backend json.loads the value: it travels as a string.
    assert isinstance(sampling[key], str)
    return key, json.loads(sampling[key])


# --- response_format --------------------------------------------------------------------


@pytest.mark.parametrize("via", list(VIA))
async def test_json_schema_answer_is_valid(fake: FakeTriton, via: str) -> None:
    engine = await started(fake, structured_outputs=via, **VIA[via])
    try:
        result = await engine.generate(chat(response_format=json_schema_format(PERSON, strict=True)))
        chunks = await collect(engine.stream(chat(response_format=json_schema_format(PERSON))))
    finally:
        await engine.close()
    message = msgspec.json.decode(result.body)["choices"][0]["message"]
    jsonschema.validate(json.loads(message["content"]), PERSON)
    jsonschema.validate(json.loads(content_of(chunks)), PERSON)
    assert len(chunks) > 5, "the JSON arrives in pieces"
    assert msgspec.json.decode(chunks[-2].data)["choices"][0]["finish_reason"] == "stop"
    key, guide = sent_guide(fake)
    assert key == {"vllm_backend": "structured_outputs", "vllm_backend_legacy": "guided_decoding", "trtllm": "trtllm"}[via]
    assert guide == {"json": PERSON}
    assert fake.rejections == []


@pytest.mark.parametrize("via", list(VIA))
async def test_json_object_answer(fake: FakeTriton, via: str) -> None:
    engine = await started(fake, structured_outputs=via, **VIA[via])
    try:
        result = await engine.generate(chat(response_format={"type": "json_object"}))
    finally:
        await engine.close()
    content = msgspec.json.decode(result.body)["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict)
    expected = {"json": {"type": "object"}} if via == "trtllm" else {"json_object": True}
    assert sent_guide(fake)[1] == expected
    if via != "trtllm":
        assert content == ANY_JSON


async def test_completions_honour_response_format(fake: FakeTriton) -> None:
    engine = await started(fake, structured_outputs="vllm_backend")
    body = {"prompt": "A person:", "max_tokens": 400, "response_format": json_schema_format(PERSON)}
    try:
        result = await engine.generate(EngineRequest(kind="completion", body=body, request_id="c1"))
    finally:
        await engine.close()
    jsonschema.validate(json.loads(msgspec.json.decode(result.body)["choices"][0]["text"]), PERSON)


async def test_no_structured_outputs_is_a_400_that_never_reaches_triton(fake: FakeTriton) -> None:
    engine = await started(fake)
    try:
        for body in ({"response_format": json_schema_format(PERSON)}, {"tools": TOOLS, "tool_choice": "required"}):
            with pytest.raises(InvalidRequest) as caught:
                await engine.generate(chat(**body))
            assert caught.value.status == 400 and caught.value.param in ("response_format", "tool_choice")
    finally:
        await engine.close()
    assert fake.requests == []


async def test_unenforceable_schema_is_a_400_naming_the_keyword(fake: FakeTriton) -> None:
    engine = await started(fake, structured_outputs="vllm_backend")
    schema = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 5}}}
    try:
        with pytest.raises(InvalidRequest, match="multipleOf") as caught:
            await collect(engine.stream(chat(response_format=json_schema_format(schema))))
    finally:
        await engine.close()
    assert caught.value.param == "response_format"
    assert fake.requests == []


# --- tools ------------------------------------------------------------------------------------


async def test_auto_tool_call_round_trip(fake: FakeTriton) -> None:
    engine = await started(fake, "llm-tools")
    try:
        first = msgspec.json.decode((await engine.generate(chat(tools=TOOLS))).body)
        choice = first["choices"][0]
        [call] = choice["message"]["tool_calls"]
        follow_up = [
            *QUESTION,
            choice["message"],
            {"role": "tool", "tool_call_id": call["id"], "content": '{"temp": 3}'},
        ]
        second = msgspec.json.decode((await engine.generate(chat(follow_up, tools=TOOLS))).body)
    finally:
        await engine.close()
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), parameters_of(TOOLS, "get_weather"))
    shown = fake.requests[0].value("text_input").decode()
    assert [json.loads(line) for line in shown.split("<tools>\n")[1].split("\n</tools>")[0].splitlines()] == TOOLS
    # The second prompt shows the model its call and the result.
    replayed = fake.requests[1].value("text_input").decode()
    assert (
        f'<|im_start|>assistant\n<tool_call>\n{{"name": "get_weather", "arguments": {call["function"]["arguments"]}}}'
        "\n</tool_call><|im_end|>" in replayed
    )
    assert '<|im_start|>user\n<tool_response>\n{"temp": 3}\n</tool_response><|im_end|>\n<|im_start|>assistant\n' in replayed
    assert second["choices"][0]["message"] == {"role": "assistant", "content": TOOL_ANSWER + '{"temp": 3}'}
    assert second["choices"][0]["finish_reason"] == "stop"


async def test_auto_tool_call_streamed(fake: FakeTriton) -> None:
    engine = await started(fake, "llm-tools")
    try:
        chunks = await collect(engine.stream(chat(tools=TOOLS)))
    finally:
        await engine.close()
    calls, content, reasons = streamed_calls(chunks[:-1])
    [call] = calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(json.loads(call["arguments"]), parameters_of(TOOLS, "get_weather"))
    assert content == "" and reasons == ["tool_calls"]
    assert chunks[-2].finish_reason == "tool_calls"
    assert chunks[-1].usage_only


async def test_tool_choice_none_leaves_tools_out(fake: FakeTriton) -> None:
    engine = await started(fake, "llm-tools")
    try:
        result = msgspec.json.decode((await engine.generate(chat(tools=TOOLS, tool_choice="none"))).body)
    finally:
        await engine.close()
    assert "<tools>" not in fake.requests[0].value("text_input").decode()
    assert "tool_calls" not in result["choices"][0]["message"]
    assert result["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("via", list(VIA))
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
async def test_forced_call(fake: FakeTriton, via: str, choice: Any) -> None:
    engine = await started(fake, "llm-tools", structured_outputs=via, **VIA[via])
    try:
        result = msgspec.json.decode((await engine.generate(chat(tools=TOOLS, tool_choice=choice))).body)
        chunks = await collect(engine.stream(chat(tools=TOOLS, tool_choice=choice)))
    finally:
        await engine.close()
    plan = tool_plan({"tools": TOOLS, "tool_choice": choice})
    assert plan is not None
    assert sent_guide(fake)[1] == {"json": forced_call_schema(plan)}
    name = "get_weather" if choice == "required" else "get_time"
    [call] = result["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == name and result["choices"][0]["finish_reason"] == "tool_calls"
    jsonschema.validate(json.loads(call["function"]["arguments"]), parameters_of(TOOLS, name))
    [streamed], content, reasons = streamed_calls(chunks[:-1])
    assert streamed["name"] == name and reasons == ["tool_calls"] and content == ""
    jsonschema.validate(json.loads(streamed["arguments"]), parameters_of(TOOLS, name))
    assert fake.rejections == []


async def test_tools_refused_without_a_parser(fake: FakeTriton) -> None:
    engine = await started(fake, "llm-tools", tool_parser=None)
    try:
        with pytest.raises(InvalidRequest) as caught:
            await engine.generate(chat(tools=TOOLS))
        await engine.generate(chat(tools=TOOLS, tool_choice="none"))
    finally:
        await engine.close()
    assert caught.value.param == "tools"
    assert len(fake.requests) == 1


# --- the fake's own checks ------------------------------------------------------------------


def _vllm_inputs(sampling: object, **extra: tuple[str, list[int], Any]) -> dict[str, tuple[str, list[int], np.ndarray]]:
    inputs = {
        "text_input": ("BYTES", [1], np.array([b"hi"], dtype=np.object_)),
        "sampling_parameters": ("BYTES", [1], np.array([json.dumps(sampling).encode()], dtype=np.object_)),
    }
    inputs.update({name: (datatype, shape, np.array(value)) for name, (datatype, shape, value) in extra.items()})
    return inputs


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        # An object where the backend json.loads a string.
        (_vllm_inputs({"max_tokens": 5, "structured_outputs": {"json": {"type": "object"}}}), NONE_PARAMS),
        (_vllm_inputs({"max_tokens": 5, "response_format": {"type": "json_object"}}), NONE_PARAMS),
        (_vllm_inputs({"structured_outputs": json.dumps({"json": {}, "regex": "a"})}), "one kind of structured outputs"),
        (_vllm_inputs({"guided_decoding": {"json_schema": {}}}), NONE_PARAMS),
        (_vllm_inputs({}, stream=("BOOL", [1, 1], [[True]])), "unexpected shape for input 'stream'"),
        (_vllm_inputs({}, guided_decoding_guide=("BYTES", [1], [b"{}"])), "unexpected inference input 'guided_decoding_guide'"),
        (
            {
                "text_input": ("BYTES", [1, 1], np.array([[b"hi"]], dtype=np.object_)),
                "max_tokens": ("INT32", [1, 1], np.array([[5]], dtype=np.int32)),
                "guided_decoding_guide_type": ("BYTES", [1, 1], np.array([[b"json_schema"]], dtype=np.object_)),
            },
            "guide string must be provided",
        ),
        (
            {
                "text_input": ("BYTES", [1, 1], np.array([[b"hi"]], dtype=np.object_)),
                "max_tokens": ("FP32", [1, 1], np.array([[5]], dtype=np.float32)),
            },
            "data-type is 'FP32'",
        ),
    ],
)
def test_fake_refuses_what_the_backends_refuse(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(WireError, match=message):
        check_llm("llm", "r1", inputs)


@pytest.mark.parametrize(
    ("via", "error", "status"),
    [("vllm_backend", UpstreamRejected, 400), ("trtllm", UpstreamError, 502)],
)
async def test_backend_refusals_surface_as_errors(fake: FakeTriton, via: str, error: type[GatewayError], status: int) -> None:
    """A schema the backend will not compile is the client's 400; a model without a guided decoder is ours."""
    engine = await started(fake, "llm-unguided", structured_outputs=via, **VIA[via])
    try:
        with pytest.raises(error) as caught:
            await engine.generate(chat(response_format=json_schema_format(PERSON)))
        plain = await engine.generate(chat())
    finally:
        await engine.close()
    assert type(caught.value) is error and caught.value.status == status
    assert "Oslo" not in caught.value.message
    assert msgspec.json.decode(plain.body)["choices"][0]["finish_reason"] in ("stop", "length")
