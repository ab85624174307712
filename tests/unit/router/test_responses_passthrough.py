"""A Responses request for an alias with the Responses API: decoding, the bodies each attempt sends, planning."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from core.config import DeploymentConfig, ModelConfig
from core.errors import InvalidRequest, NoHealthyDeployment, PermissionDenied
from core.principal import Principal
from policies.routing import Alias, Deployment, Router
from router.responses_native import MIN_OUTPUT_TOKENS, ResponsesContext, native_alias, upstream_body
from router.responses_surface import chat_body, input_items, responses_body, translated
from router.responses_wire import ResponsesRequest, decode_native, decode_request

WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
REASONING = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "Hmm."}], "encrypted_content": "enc"}
SEARCH = {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "weather"}}


def native(**body: Any) -> tuple[ResponsesRequest, Any, int]:
    return decode_native({"model": "m", **body})


def refused_natively(**body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        native(**body)
    return info.value


# --- decoding ------------------------------------------------------------------------------


def test_built_in_tools_items_and_settings_are_kept_for_the_upstream() -> None:
    request, kept, unknown = native(
        input=[{"role": "user", "content": "hi"}, REASONING, SEARCH],
        tools=[{"type": "web_search", "search_context_size": "low"}, WEATHER],
        tool_choice={"type": "web_search"},
        reasoning={"effort": "high"},
        include=["reasoning.encrypted_content"],
        text={"format": {"type": "text"}, "verbosity": "low"},
        prompt_cache_key="k",
        frobnicate=1,
    )
    assert unknown == 1  # only what no upstream takes is dropped
    assert kept.tools == [{"type": "web_search", "search_context_size": "low"}, WEATHER]
    assert [t.name for t in request.tools or ()] == ["get_weather"]
    assert kept.tool_choice == {"type": "web_search"}
    assert kept.fields == {"reasoning": {"effort": "high"}, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "k"}
    assert kept.requires == "tools of type `web_search`"
    assert request.text is not None and request.text.verbosity == "low"


@pytest.mark.parametrize(
    ("body", "requires"),
    [
        ({"input": "x"}, None),
        ({"input": "x", "reasoning": {"effort": "low"}, "include": []}, None),  # settings: a translation drops them
        ({"input": [REASONING]}, "input items of type `reasoning`"),
        ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "a `tool_choice` of type `file_search`"),
    ],
)
def test_what_only_a_native_deployment_serves_is_named(body: dict[str, Any], requires: str | None) -> None:
    assert native(**body)[1].requires == requires


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "tools": [{"type": "web_search"}, {"type": "function", "parameters": {}}]}, "tools[1].name"),
        ({"input": "x", "tools": [{"type": "web_search"}, 7]}, "tools[1]"),
        ({"input": "x", "tools": [{"type": "computer_use_preview"}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0].id"),
        ({"input": "x", "include": "all"}, "include"),
        ({"input": "x", "text": {"verbosity": "loud"}}, "text.verbosity"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ],
)
def test_bad_native_input_is_a_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    error = refused_natively(**body)
    assert (error.status, error.param) == (400, param)


def test_a_translated_alias_still_refuses_and_drops_what_chat_cannot_carry() -> None:
    with pytest.raises(InvalidRequest) as info:
        decode_request({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})
    assert info.value.param == "tools[0].type"
    request, unknown = decode_request({"model": "m", "input": "x", "reasoning": {"effort": "low"}, "text": {"verbosity": "low"}})
    assert unknown == 1
    assert chat_body(request, input_items(request, "r")) == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


# --- the Responses body, for the upstream and translated -----------------------------------------


def conversation() -> tuple[ResponsesRequest, Any, list[dict[str, Any]]]:
    request, kept, _ = native(
        input=[{"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}],
        instructions="Be brief.",
        tools=[WEATHER],
        reasoning={"effort": "low"},
        metadata={"k": "v"},
        max_output_tokens=64,
        store=True,
        stream=True,
    )
    history: list[dict[str, Any]] = [
        {
            "type": "message",
            "id": "msg_r0_0",
            "role": "user",
            "content": [{"type": "input_text", "text": "Weather?"}],
            "status": "completed",
        },
        {**REASONING, "status": "completed"},
        {"type": "function_call", "id": "fc_up", "call_id": "call_1", "name": "get_weather", "arguments": "{}", "status": "completed"},
    ]
    return request, kept, [*history, *input_items(request, "r1")]


def test_the_upstream_gets_the_expanded_conversation_with_store_off() -> None:
    request, kept, items = conversation()
    body = upstream_body(responses_body(request, items, kept), "gpt-up", None)
    assert (body["model"], body["store"], body["stream"], body["max_output_tokens"]) == ("gpt-up", False, True, 64)
    assert (body["instructions"], body["reasoning"], body["tools"]) == ("Be brief.", {"effort": "low"}, [WEATHER])
    assert not {"metadata", "previous_response_id"} & set(body)
    user, reasoning, call, output = body["input"]
    assert "id" not in user and "id" not in output, "the gateway's own ids name nothing upstream"
    assert (reasoning["id"], call["id"]) == ("rs_1", "fc_up")
    assert output == {"type": "function_call_output", "call_id": "call_1", "output": "Sunny", "status": "completed"}


def test_reasoning_without_its_encrypted_content_is_left_out_and_a_budget_bounds_the_output() -> None:
    request, kept, items = conversation()
    items[1] = {**items[1], "encrypted_content": None}
    body = upstream_body(responses_body(request, items, kept), "gpt-up", 3)
    assert [i["type"] for i in body["input"]] == ["message", "function_call", "function_call_output"]
    assert body["max_output_tokens"] == MIN_OUTPUT_TOKENS


def test_a_translated_attempt_gets_chat_without_the_items_chat_cannot_carry() -> None:
    request, kept, items = conversation()
    items.insert(1, SEARCH)
    chat = translated(responses_body(request, items, kept))
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]  # fmt: skip
    assert (chat["max_tokens"], chat["stream"], "reasoning" in chat) == (64, True, False)


def test_a_built_in_tool_cannot_be_translated() -> None:
    request, kept, _ = native(input="x", tools=[WEATHER, {"type": "file_search", "vector_store_ids": ["vs_1"]}])
    with pytest.raises(InvalidRequest) as info:
        translated(responses_body(request, input_items(request, "r"), kept))
    assert info.value.param == "tools[1].type" and "file_search" in info.value.message


# --- per attempt: native or translated ----------------------------------------------------------


def deployment(name: str, *, native: bool, model: str = "up-model") -> Deployment:
    engine: Any = SimpleNamespace(native_responses=native, name=name)
    return Deployment(DeploymentConfig(name=name, provider="openai", model=model), engine)


def context(deployments: list[Deployment], requires: str | None = None, **extra: Any) -> ResponsesContext:
    alias = Alias(ModelConfig(alias="a", deployments=[d.name for d in deployments]), [deployments])
    request, kept, _ = native(input="hello", tools=[WEATHER])
    body = responses_body(request, input_items(request, "r"), kept)
    return ResponsesContext(
        request_id="r",
        snapshot=SimpleNamespace(router=Router([alias])),  # type: ignore[arg-type]
        principal=Principal(tenant="t", key_id="k"),
        kind="responses",
        route="responses",
        alias="a",
        body=body,
        requires=requires,
        **extra,
    )


def test_each_attempt_gets_the_form_its_deployment_reads() -> None:
    up, chat = deployment("up", native=True), deployment("chat", native=False, model="chat-model")
    assert native_alias(Alias(ModelConfig(alias="a", deployments=["chat", "up"]), [[chat], [up]]))
    ctx = context([up, chat], max_tokens=20)
    first, second = ctx.engine_request(up), ctx.engine_request(chat)
    assert (first.kind, first.body["model"], first.body["store"], first.body["max_output_tokens"]) == ("responses", "up-model", False, 20)
    assert (second.kind, second.body["model"], second.body["max_tokens"]) == ("chat", "chat-model", 20)
    assert second.body["messages"] == [{"role": "user", "content": "hello"}]
    ctx.cloud_body = {**ctx.body, "input": [{"type": "message", "role": "user", "content": "<EMAIL_ADDRESS_1>", "status": "completed"}]}
    assert ctx.engine_request(up).body["input"][0]["content"] == "<EMAIL_ADDRESS_1>", "a cloud deployment gets the redacted body"


def test_a_request_needing_the_responses_api_is_planned_on_such_deployments_only() -> None:
    up, chat = deployment("up", native=True), deployment("chat", native=False)
    assert context([chat, up]).servable([chat, up]) == [chat, up]
    assert context([chat, up], requires="tools of type `web_search`").servable([chat, up]) == [up]
    with pytest.raises(PermissionDenied):  # the tenant's policy left the native one out
        context([chat, up], requires="tools of type `web_search`").servable([chat])
    up.breaker.force_open()
    with pytest.raises(NoHealthyDeployment):  # the native one is down: a retry may find it
        context([chat, up], requires="tools of type `web_search`").servable([chat])
    with pytest.raises(InvalidRequest) as info:
        context([chat], requires="tools of type `web_search`").servable([chat])
    assert "web_search" in info.value.message and info.value.status == 400


def test_the_native_engine_flag_is_the_deployment_option() -> None:
    from serving.base import EngineSpec, serves_responses
    from serving.registry import build_engine, parse_options

    for provider, base in (("openai", ""), ("azure", "https://r.openai.azure.com")):
        on = build_engine(EngineSpec("d", provider, "m", base_url=base, options=parse_options(provider, {"responses": "native"})))
        off = build_engine(EngineSpec("d", provider, "m", base_url=base, options=parse_options(provider, {})))
        assert (serves_responses(on), serves_responses(off)) == (True, False)
    with pytest.raises(Exception, match="responses"):
        parse_options("openai", {"responses": "sometimes"})
