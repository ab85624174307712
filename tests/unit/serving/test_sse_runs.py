"""Runs of plain events relayed as the upstream framed them: serving.sse.iter_chunk_batches with ``framed``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.base import StreamChunk
from serving.sse import UpstreamStreamError, chunk_text, chunk_texts, iter_chunk_batches, singles, split_events, text_bytes_bound


def _event(text: str, finish: str | None = None) -> bytes:
    chunk = {"id": "c", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}], "usage": None}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
ERROR = b'data: {"error":{"message":"the model fell over"}}\n\n'
DONE = b"data: [DONE]\n\n"


async def _reads(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _batches(*parts: bytes, framed: bool) -> list[list[StreamChunk]]:
    return [batch async for batch in iter_chunk_batches(_reads(*parts), framed=framed)]


def _fields(chunk: StreamChunk) -> tuple[object, ...]:
    return (chunk.data, chunk.usage, chunk.usage_only, chunk.text, chunk.finish_reason, chunk.batch_end)


async def test_a_reads_plain_events_come_as_one_run_of_the_bytes_as_sent() -> None:
    plain = _event("a") + _event("b") + _event("c", "stop")
    batches = await _batches(plain + USAGE + DONE, framed=True)
    assert len(batches) == 1
    run, usage = batches[0]
    assert (run.events, run.data, run.batch_end) == (3, plain, False)
    assert usage.usage is not None and usage.usage.completion_tokens == 4 and usage.batch_end
    # what the relay writes for the run is what it would write for its events one by one
    assert b"".join(b"data: " + single.data + b"\n\n" for single in split_events(run)) == run.data


async def test_without_framed_every_chunk_is_one_payload() -> None:
    batches = await _batches(_event("a") + _event("b") + DONE, framed=False)
    assert [[chunk.events for chunk in batch] for batch in batches] == [[0, 0]]


async def test_events_after_the_first_that_needs_a_look_come_one_by_one() -> None:
    batches = await _batches(_event("a") + USAGE + _event("b") + DONE, framed=True)
    assert [(chunk.events, chunk.usage is not None, chunk_text(chunk)) for chunk in batches[0]] == [
        (1, False, "a"),
        (0, True, ""),
        (0, False, "b"),
    ]


async def test_done_in_a_models_text_is_text_and_a_done_event_ends_the_stream_wherever_it_is() -> None:
    batches = await _batches(_event("say [DONE]") + _event("b") + DONE, framed=True)
    assert [(chunk.events, chunk_text(chunk)) for chunk in batches[0]] == [(2, "say [DONE]b")]
    # a [DONE] before the read's end: nothing after it is handed over
    batches = await _batches(_event("a") + DONE + _event("after"), framed=True)
    assert [chunk_text(chunk) for batch in batches for chunk in batch] == ["a"]


@pytest.mark.parametrize(
    "head",
    [
        b"event: delta\n" + _event("a"),  # another field
        b'data: {"choices":\ndata: []}\n\n',  # a payload over two data lines
        b'data:{"choices":[]}\n\n',  # no space after the colon
        b": a comment\n\n",
    ],
)
async def test_anything_but_single_data_lines_is_read_event_by_event(head: bytes) -> None:
    framed = await _batches(head + _event("b") + DONE, framed=True)
    plain = await _batches(head + _event("b") + DONE, framed=False)
    assert all(chunk.events == 0 for batch in framed for chunk in batch)
    assert [list(map(_fields, batch)) for batch in framed] == [list(map(_fields, batch)) for batch in plain]


async def test_crlf_lines_are_normalised_before_the_run_is_taken() -> None:
    batches = await _batches((_event("a") + _event("b")).replace(b"\n", b"\r\n") + DONE, framed=True)
    assert batches[0][0].events == 2 and batches[0][0].data == _event("a") + _event("b")


async def test_an_error_event_hands_over_the_run_before_it_then_raises() -> None:
    got: list[list[StreamChunk]] = []
    with pytest.raises(UpstreamStreamError):
        async for batch in iter_chunk_batches(_reads(_event("a") + _event("b") + ERROR + _event("c")), framed=True):
            got.append(batch)
    assert [[(chunk.events, chunk.batch_end) for chunk in batch] for batch in got] == [[(2, True)]]


async def test_a_stream_that_ends_without_done_raises_after_its_events() -> None:
    got: list[list[StreamChunk]] = []
    with pytest.raises(EOFError):
        async for batch in iter_chunk_batches(_reads(_event("a"), _event("b")[:-1]), framed=True):
            got.append(batch)
    assert [chunk_text(chunk) for batch in got for chunk in batch] == ["a", "b"]


def test_a_runs_text_is_its_events_and_counted_event_by_event() -> None:
    run = StreamChunk(_event("a") + _event(" b") + _event("", "length"), None, False, None, None, True, 3)
    assert list(chunk_texts([run, StreamChunk(b"{}", text="c")])) == ["a", " b", "", "c"]
    assert chunk_text(run) == "a b" and run.finish_reason == "length"
    assert [single.batch_end for single in split_events(run)] == [False, False, True]
    plain = [StreamChunk(b"{}")]
    assert singles(plain) is plain
    assert [chunk.data for chunk in singles([run, *plain])][-1] == b"{}"


_TEXTS = st.text(alphabet=st.sampled_from(list('ab \n"\\é東[]DONE:')), max_size=6)
_EVENTS = st.lists(
    st.one_of(
        _TEXTS.map(_event),
        st.just(USAGE),
        st.just(b": keep-alive\n\n"),
        st.just(b"event: x\n" + _event("e")),
        st.just(DONE),  # the end, before the stream's end: nothing after it counts
        st.just(b'data: "a string"\n\n'),  # a payload that is no object
        st.just(b"data:" + _event("no space")[6:]),
        st.just(b"\n"),  # a blank line more
        st.just(ERROR),
        _TEXTS.map(lambda text: _event(text).replace(b"\n\n", b"\r\n\r\n")),
    ),
    max_size=12,
)


@settings(max_examples=500, deadline=None)
@given(events=_EVENTS, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6), done=st.booleans())
async def test_framed_runs_split_back_are_the_chunks_read_one_by_one(events: list[bytes], cuts: list[int], done: bool) -> None:
    stream = b"".join(events) + (DONE if done else b"")
    points = sorted({0, len(stream), *(min(cut, len(stream)) for cut in cuts)})
    reads = [stream[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]

    async def run(framed: bool) -> tuple[list[list[tuple[object, ...]]], str]:
        out: list[list[tuple[object, ...]]] = []
        try:
            async for batch in iter_chunk_batches(_reads(*reads), framed=framed):
                assert batch and batch[-1].batch_end
                for chunk in batch:
                    if chunk.events:
                        assert chunk is batch[0]
                        assert b"".join(b"data: " + s.data + b"\n\n" for s in split_events(chunk)) == chunk.data
                out.append([_fields(chunk) for chunk in singles(batch)])
        except EOFError:
            return out, "eof"
        except UpstreamStreamError:
            return out, "error"
        return out, "done"

    assert await run(True) == await run(False)


_PIECES = st.text(max_size=8)  # any text: quotes, backslashes, control characters, emoji


@settings(max_examples=300, deadline=None)
@given(
    texts=st.lists(st.tuples(_PIECES, st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=8),
    spaced=st.booleans(),
)
def test_a_runs_text_bound_is_never_below_its_texts(texts: list[tuple[str, bool, bool, bool]], spaced: bool) -> None:
    events = []
    for text, completion, ascii_only, typed in texts:
        choice = {"index": 0, "text": text} if completion else {"index": 0, "delta": {"content": text}}
        if typed:  # a key's name as a value, before the text member
            choice = {"type": "text", "label": "content", **choice}
        if text == "":  # a finish chunk: no text member at all
            choice = {"index": 0, "delta": {}, "finish_reason": "stop"}
        payload = json.dumps({"id": "c", "choices": [choice]}, ensure_ascii=ascii_only, separators=(", ", " : ") if spaced else (",", ":"))
        events.append(b"data: " + payload.encode() + b"\n\n")
    run = StreamChunk(b"".join(events), None, False, None, None, False, len(events))
    bound = text_bytes_bound(run)
    assert bound >= sum(len(text.encode()) for text in chunk_texts([run]))
    assert bound <= len(run.data)


def test_a_runs_text_bound_is_what_follows_each_events_text_key() -> None:
    role = b'data: {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
    events = [role, _event("Hello"), _event(" world"), _event("", "stop")]
    run = StreamChunk(b"".join(events), None, False, None, None, False, len(events))
    # events alike up to the key (the last three) count from it; the role chunk, unlike them, counts whole
    after = [len(e) - e.index(b'"content"') - len(b'"content"') - 2 for e in events[1:]]
    assert text_bytes_bound(run) == len(role) + sum(after)
