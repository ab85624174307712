"""During-stream guardrails: the sliding window, chunk shapes, content_filter, faults."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest

from core.config_guardrails import GuardrailConfig
from policies.guardrails import GuardrailDeps, build_guardrails
from policies.guardrails_builtin import WindowGuard
from policies.guardrails_stream import StreamScreen, content_filter_chunk
from policies.guardrails_types import StreamGuard, Text, Verdict, allowed

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRETS = {"kind": "secrets", "name": "no-secrets", "mode": "stream", "window_chars": 64}


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as executor:
        yield executor


def screen(pool: ThreadPoolExecutor, *entries: dict[str, Any], plugins: dict[str, Any] | None = None) -> StreamScreen:
    configs = msgspec.convert(list(entries), list[GuardrailConfig])
    made = build_guardrails(configs, GuardrailDeps(executor=pool, plugins=plugins or {})).stream.screen()
    assert made is not None
    return made


def chunk(content: str, index: int = 0, **extra: Any) -> bytes:
    return msgspec.json.encode(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": index, "delta": {"content": content}, "finish_reason": None}],
            **extra,
        }
    )


def split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 19])
def test_a_secret_split_across_chunks_is_caught_when_its_last_piece_arrives(pool: ThreadPoolExecutor, size: int) -> None:
    guard = screen(pool, SECRETS)
    text = "Here is the config you asked for: aws_access_key_id = " + AWS_KEY + " and more text after it"
    pieces = split(text, size)
    end = text.index(AWS_KEY) + len(AWS_KEY)
    verdicts = [guard.feed_chunk(chunk(p)) for p in pieces]
    first = next(i for i, v in enumerate(verdicts) if v is not None)
    assert verdicts[first] == Verdict("blocked", "no-secrets", "aws_access_key")
    # The chunk that completes the key is the one refused: the whole key never goes out.
    assert first == (end - 1) // size


def test_a_clean_stream_passes(pool: ThreadPoolExecutor) -> None:
    guard = screen(pool, SECRETS)
    assert all(guard.feed_chunk(chunk(p)) is None for p in split("The quick brown fox jumps over the lazy dog. " * 40, 5))


def test_choices_and_tool_calls_have_their_own_windows(pool: ThreadPoolExecutor) -> None:
    guard = screen(pool, SECRETS)
    # Interleaved halves in two choices never form a key together.
    assert guard.feed_chunk(chunk(AWS_KEY[:10], index=0)) is None
    assert guard.feed_chunk(chunk(AWS_KEY[10:], index=1)) is None
    call = {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": AWS_KEY[10:]}}]}}
    assert guard.feed_chunk(msgspec.json.encode({"choices": [call]})) is None
    assert guard.feed_chunk(chunk(AWS_KEY[10:], index=0)) is not None


@pytest.mark.parametrize(
    "payloads",
    [
        [{"object": "text_completion", "choices": [{"index": 0, "text": AWS_KEY[:8]}]}, {"choices": [{"index": 0, "text": AWS_KEY[8:]}]}],
        [{"choices": [{"index": 0, "delta": {"function_call": {"arguments": '{"k": "' + AWS_KEY}}}]}],
        [
            {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": AWS_KEY[:5]},
            {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": AWS_KEY[5:]},
        ],
    ],
)
def test_completion_function_call_and_responses_streams(pool: ThreadPoolExecutor, payloads: list[dict[str, Any]]) -> None:
    guard = screen(pool, SECRETS)
    verdicts = [guard.feed_chunk(msgspec.json.encode(p)) for p in payloads]
    assert verdicts[-1] is not None and all(v is None for v in verdicts[:-1])


def test_not_json_and_empty_pieces_are_ignored(pool: ThreadPoolExecutor) -> None:
    guard = screen(pool, SECRETS)
    assert guard.feed_chunk(b"[DONE]") is None and guard.feed_chunk(b"{not json") is None and guard.feed("") is None


def test_a_warning_is_recorded_once_and_the_stream_goes_on(pool: ThreadPoolExecutor) -> None:
    guard = screen(pool, {**SECRETS, "action": "warn"})
    assert guard.feed(f"one {AWS_KEY} two") is None
    assert guard.feed(f"three {AWS_KEY}") is None
    assert guard.warnings == [Verdict("warned", "no-secrets", "aws_access_key")]


def test_deny_patterns_in_a_stream(pool: ThreadPoolExecutor) -> None:
    guard = screen(
        pool, {"kind": "deny_patterns", "name": "deny", "mode": "stream", "patterns": [r"project\s+apollo"], "ignore_case": True}
    )
    assert [guard.feed(p) for p in ("the Proj", "ect  Apo", "llo plan")][2] == Verdict("blocked", "deny", "pattern_0")


def test_the_window_bounds_the_work_per_piece() -> None:
    seen: list[int] = []

    def find(text: str) -> str | None:
        seen.append(len(text))
        return None

    guard = WindowGuard("w", find, window=32)
    for _ in range(1000):
        guard.feed("abcd")
    # Every scan reads at most the window plus the new piece, never the output so far.
    assert max(seen) == 32 + 4 and len(seen) == 1000


def test_a_match_longer_than_the_window_is_not_seen() -> None:
    guard = WindowGuard("w", lambda text: "found" if "x" * 40 in text else None, window=16)
    assert all(guard.feed("x" * 8) is None for _ in range(10))
    assert WindowGuard("w", lambda text: "found" if "x" * 40 in text else None, window=64).feed("x" * 40) is not None


class _Exploding:
    def feed(self, delta: str) -> Verdict | None:
        raise RuntimeError(delta)


class _Slow:
    def feed(self, delta: str) -> Verdict | None:
        time.sleep(0.05)
        return None


class _StreamPlugin:
    def __init__(self, name: str, make: type) -> None:
        self.name = name
        self._make = make

    async def check(self, texts: Sequence[Text]) -> Verdict:
        return allowed(self.name)

    def stream(self) -> StreamGuard:
        guard: StreamGuard = self._make()
        return guard


PLUGINS = {"explodes": _StreamPlugin("explodes", _Exploding), "slow": _StreamPlugin("slow", _Slow)}


@pytest.mark.parametrize(("name", "category"), [("explodes", "guardrail_error"), ("slow", "guardrail_timeout")])
def test_a_failing_stream_guard_follows_its_policy(pool: ThreadPoolExecutor, name: str, category: str) -> None:
    entry = {"kind": "plugin", "name": "p", "plugin": name, "mode": "stream", "timeout_s": 0.01}
    closed = screen(pool, {**entry, "on_error": "fail_closed"}, plugins=PLUGINS)
    assert closed.feed("hello") == Verdict("blocked", "p", category)
    opened = screen(pool, {**entry, "on_error": "fail_open"}, SECRETS, plugins=PLUGINS)
    assert opened.feed("hello") is None and opened.feed("more") is None
    assert opened.faults == [Verdict("allowed", "p", category)]
    # The other guardrails keep working.
    assert opened.feed(AWS_KEY) == Verdict("blocked", "no-secrets", "aws_access_key")


def test_content_filter_chunk_ends_every_choice_seen() -> None:
    ended = msgspec.json.decode(content_filter_chunk(chunk("AKIA...", index=1)))
    assert ended == {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 1, "delta": {}, "finish_reason": "content_filter"}],
    }
    completion = msgspec.json.decode(content_filter_chunk(b'{"object": "text_completion", "choices": [{"index": 0, "text": "x"}]}'))
    assert completion["choices"] == [{"index": 0, "text": "", "finish_reason": "content_filter"}]
    assert msgspec.json.decode(content_filter_chunk(b"garbage"))["choices"][0]["finish_reason"] == "content_filter"


def test_hold_back_sends_an_event_only_once_enough_text_follows_it() -> None:
    from policies.guardrails_stream import HoldBack

    hold = HoldBack(10)
    assert hold.add(b"a", 4) == []
    assert hold.add(b"b", 4) == []
    assert hold.add(b"c", 4) == []  # 12 held: "a" has 8 after it, fewer than 10
    assert hold.add(b"d", 4) == [b"a"]  # now 12 follow "a"
    assert hold.add(b"e", 0) == []
    assert hold.flush() == [b"b", b"c", b"d", b"e"]
    assert hold.flush() == []
    assert HoldBack(0).add(b"x", 3) == [b"x"]


def test_a_screen_holds_back_its_longest_window() -> None:
    import msgspec

    from core.config_guardrails import GuardrailConfig
    from policies.guardrails import GuardrailDeps, build_guardrails

    configs = msgspec.convert(
        [{"kind": "secrets", "name": "s", "mode": "stream", "window_chars": 64},
         {"kind": "deny_patterns", "name": "d", "mode": "stream", "patterns": ["x+y"], "window_chars": 128}],
        list[GuardrailConfig],
    )  # fmt: skip
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        screen = build_guardrails(configs, GuardrailDeps(executor=pool)).stream.screen()
    assert screen is not None and screen.hold == 128
    screen.feed_chunk(b'{"choices":[{"index":0,"delta":{"content":"hello"}}]}')
    assert screen.fed == 5
