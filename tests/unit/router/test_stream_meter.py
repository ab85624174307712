from __future__ import annotations

import json
import random

import pytest

from budgets.tokens import fallback_count, tiktoken_count
from router.stream_meter import StreamMeter
from serving.base import StreamChunk
from serving.sse import chunk_text, chunk_texts, peek_chunk, split_events, text_bytes_bound

WORDS = ["hello", " world", " ça", " va", "!", " 東京", " 🚀", "\n", ' "quoted"', " tab\t", "\\", " x" * 7]


def _chunk(text: str, finish: str | None = None, ensure_ascii: bool = False) -> StreamChunk:
    event = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return peek_chunk(json.dumps(event, ensure_ascii=ensure_ascii).encode())


def _relay(meter: StreamMeter, chunks: list[StreamChunk], relayed: list[StreamChunk]) -> bool:
    """What the pipeline does: admit, then append; False once a chunk is refused."""
    for chunk in chunks:
        if not meter.admits(chunk):
            return False
        relayed.append(chunk)
    return True


@pytest.mark.parametrize("seed", range(40))
def test_what_is_relayed_never_exceeds_the_allowance(seed: int) -> None:
    rng = random.Random(seed)
    count = tiktoken_count if seed % 2 else fallback_count
    allowance = rng.choice([1, 3, 10, 40, 200])
    chunks = [_chunk("".join(rng.choices(WORDS, k=rng.randint(1, 4))), ensure_ascii=bool(seed % 3)) for _ in range(80)]
    relayed: list[StreamChunk] = []
    meter = StreamMeter(allowance, count, relayed)
    finished = _relay(meter, chunks, relayed)
    # the meter counts as the ledger does for a stream without reported usage: chunk by chunk
    assert meter.exact() == sum(count(chunk_text(c)) for c in relayed) <= allowance
    if not finished:
        # the refused chunk really would not have fitted, counted as the meter counts
        refused = chunks[len(relayed)]
        assert meter.exact() + count(chunk_text(refused)) > allowance


def test_nothing_is_tokenized_while_the_raw_bytes_fit() -> None:
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return len(text)

    relayed: list[StreamChunk] = []
    chunks = [_chunk("word ") for _ in range(20)]
    meter = StreamMeter(sum(len(c.data) for c in chunks), counting, relayed)
    assert _relay(meter, chunks, relayed)
    assert calls == []
    assert meter.exact() == 100 and calls == ["word "] * 20


def test_tight_bounds_come_before_tokenizing() -> None:
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return len(text)

    relayed: list[StreamChunk] = []
    chunks = [_chunk("ab") for _ in range(100)]
    # the raw bytes overflow after a few chunks, the text-bytes bound never does
    meter = StreamMeter(sum(map(text_bytes_bound, chunks)), counting, relayed)
    assert sum(len(c.data) for c in chunks) > 2 * meter.allowance
    assert _relay(meter, chunks, relayed)
    assert calls == []
    assert meter.exact() == 200


def test_a_stream_is_cut_where_the_count_would_pass_the_allowance() -> None:
    relayed: list[StreamChunk] = []
    meter = StreamMeter(5, fallback_count, relayed)  # fallback: a token per 4 bytes, rounded up
    assert not _relay(meter, [_chunk("abcd") for _ in range(10)], relayed)
    assert len(relayed) == 5 and meter.exact() == 5


def test_a_final_chunk_is_never_cut() -> None:
    relayed: list[StreamChunk] = []
    meter = StreamMeter(1, fallback_count, relayed)
    assert _relay(meter, [_chunk("abcd"), _chunk("efgh", finish="stop")], relayed)
    assert meter.exact() == 2


def test_without_a_counter_nothing_is_cut() -> None:
    relayed: list[StreamChunk] = []
    meter = StreamMeter(1, None, relayed)
    assert _relay(meter, [_chunk("abcd" * 50) for _ in range(5)], relayed)


def test_chunks_with_known_text_are_metered_too() -> None:
    relayed: list[StreamChunk] = []
    meter = StreamMeter(3, fallback_count, relayed)
    chunks = [StreamChunk(data=b'{"choices":[{"delta":{"content":"abcd"}}]}', text="abcd") for _ in range(5)]
    assert not _relay(meter, chunks, relayed)
    assert len(relayed) == 3


def _run(chunks: list[StreamChunk]) -> StreamChunk:
    """``chunks`` as one run of events, as ``serving.sse.iter_chunk_batches`` hands a read's plain events over."""
    return StreamChunk(b"".join(b"data: " + c.data + b"\n\n" for c in chunks), None, False, None, None, False, len(chunks))


def _relay_runs(meter: StreamMeter, runs: list[StreamChunk], relayed: list[StreamChunk]) -> list[bytes]:
    """What the pipeline does with runs: taken whole while their raw bytes fit, else split and admitted one by one."""
    sent: list[bytes] = []
    for run in runs:
        if meter.takes(run):
            relayed.append(run)
            sent.append(run.data)
            continue
        for chunk in split_events(run):
            if not meter.admits(chunk):
                return sent
            relayed.append(chunk)
            sent.append(b"data: " + chunk.data + b"\n\n")
    return sent


@pytest.mark.parametrize("seed", range(40))
def test_runs_are_cut_at_the_same_event_and_counted_the_same_as_their_events(seed: int) -> None:
    rng = random.Random(seed)
    count = tiktoken_count if seed % 2 else fallback_count
    allowance = rng.choice([1, 3, 10, 40, 200, 2000])
    chunks = [_chunk("".join(rng.choices(WORDS, k=rng.randint(1, 4)))) for _ in range(80)]
    one_by_one: list[StreamChunk] = []
    single = StreamMeter(allowance, count, one_by_one)
    _relay(single, chunks, one_by_one)
    cuts = sorted(rng.sample(range(1, 80), rng.randint(0, 12)))
    runs = [_run(chunks[a:b]) for a, b in zip([0, *cuts], [*cuts, 80], strict=True)]
    in_runs: list[StreamChunk] = []
    meter = StreamMeter(allowance, count, in_runs)
    sent = _relay_runs(meter, runs, in_runs)
    assert b"".join(sent) == b"".join(b"data: " + c.data + b"\n\n" for c in one_by_one)
    assert meter.exact() == single.exact() == sum(map(count, filter(None, chunk_texts(in_runs))))
