from __future__ import annotations

import pytest

from budgets.prices import cost_pico, usd, worst_case_pico
from budgets.tokens import (
    BOUND_BYTES,
    completion_budget,
    count_prompt_tokens,
    estimate_prompt_tokens,
    fallback_count,
    prompt_bound,
    request_texts,
    tiktoken_count,
)
from core.config import Price
from serving.base import PromptTokensDetails, Usage


def test_cost_is_exact_integer_pico_usd() -> None:
    price = Price(input_per_mtok=2_500_000, output_per_mtok=10_000_000, cached_input_per_mtok=1_250_000)
    usage = Usage(
        prompt_tokens=1000, completion_tokens=200, total_tokens=1200, prompt_tokens_details=PromptTokensDetails(cached_tokens=400)
    )
    # 600 * 2.5e6 + 400 * 1.25e6 + 200 * 1e7 pico-USD
    assert cost_pico(usage, price) == 600 * 2_500_000 + 400 * 1_250_000 + 200 * 10_000_000
    assert usd(cost_pico(usage, price)) == "0.004000000000"


def test_cached_price_defaults_to_input_price() -> None:
    price = Price(input_per_mtok=3, output_per_mtok=5)
    usage = Usage(prompt_tokens=10, completion_tokens=1, prompt_tokens_details=PromptTokensDetails(cached_tokens=4))
    assert cost_pico(usage, price) == 35
    assert worst_case_pico(10, 7, price) == 65


def test_usd_formatting() -> None:
    assert usd(1) == "0.000000000001"
    assert usd(10**12 * 3 + 5) == "3.000000000005"
    assert usd(-10**12) == "-1.000000000000"


def test_tiktoken_is_offline_and_exact() -> None:
    assert tiktoken_count("hello world") == 2
    assert fallback_count("abcdefgh") == 2
    assert fallback_count("abcdefghi") == 3


async def test_chat_estimate_includes_overhead() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "hello world"},
            {"role": "user", "content": [{"type": "text", "text": "hello world"}], "name": "bob"},
        ]
    }
    assert await estimate_prompt_tokens("chat", body, tiktoken_count) == 2 + 2 + 3 + 3 + 1 + 3


async def test_long_prompt_is_counted_off_loop() -> None:
    text = "word " * 10_000
    assert await estimate_prompt_tokens("completion", {"prompt": text}, tiktoken_count) == tiktoken_count(text)
    assert await estimate_prompt_tokens("completion", {"prompt": [[1, 2, 3], [4]]}, tiktoken_count) == 4


def test_completion_budget() -> None:
    assert completion_budget({"max_tokens": 50, "n": 2}, 4096) == 100
    assert completion_budget({"max_completion_tokens": 7}, 4096) == 7
    assert completion_budget({}, 4096) == 4096


def _bound_from_texts(kind: str, body: dict[str, object]) -> int | None:
    """What the bound must be: the UTF-8 bytes of every text sent, plus the fixed overhead."""
    texts, overhead = request_texts(kind, body)
    size = sum(len(t.encode("utf-8")) for t in texts)
    return size + overhead if size <= BOUND_BYTES else None


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("chat", {"messages": [{"role": "user", "content": "Say hello."}]}),
        ("chat", {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüß Gott, 東京", "name": "ann"}]}),
        ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": " two"}]}]}),
        (
            "chat",
            {
                "messages": [
                    {"role": "user", "content": "x"},
                    {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
                ]
            },
        ),
        ("chat", {"messages": [{"role": "user", "content": "é" * 128}]}),
        ("chat", {"messages": [{"role": "user", "content": "a" * 200}, {"role": "user", "content": "b" * 57}]}),
        ("chat", {"messages": [{"role": "user", "content": "a" * 256}]}),
        ("chat", {"messages": []}),
        ("completion", {"prompt": "Once upon a time"}),
        ("completion", {"prompt": ["one", [1, 2, 3]]}),
        ("embedding", {"input": "x" * 300}),
    ],
)
def test_prompt_bound_is_the_byte_count_of_what_is_sent(kind: str, body: dict[str, object]) -> None:
    assert prompt_bound(kind, body, tiktoken_count) == _bound_from_texts(kind, body)
    bound = prompt_bound(kind, body, tiktoken_count)
    if bound is not None:
        texts, overhead = request_texts(kind, body)
        assert sum(tiktoken_count(t) for t in texts) + overhead <= bound


def test_prompt_bound_is_only_for_tiktoken() -> None:
    assert prompt_bound("chat", {"messages": [{"role": "user", "content": "hi"}]}, fallback_count) is None


def test_tool_definitions_are_counted_with_the_prompt() -> None:
    messages = [{"role": "user", "content": "Weather?"}]
    weather = {"name": "get_weather", "description": "The weather in a city, " * 20, "parameters": {"type": "object"}}
    tools = [{"type": "function", "function": weather}]
    bare = count_prompt_tokens("chat", {"messages": messages}, tiktoken_count)
    with_tools = count_prompt_tokens("chat", {"messages": messages, "tools": tools}, tiktoken_count)
    assert with_tools - bare >= tiktoken_count("The weather in a city, " * 20), "the definitions' prose is counted"
