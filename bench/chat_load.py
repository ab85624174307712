"""Concurrent chat completions against an OpenAI-compatible server, timed.

The load generator of ``bench.vllm_compare``: a fixed list of request bodies
sent by one aiohttp session with at most ``concurrency`` in flight, each request
timed end to end and, when streamed, to its first chunk with text. Figures come
from what the server reports (``usage.completion_tokens``), not from counting
chunks, so servers that batch several tokens per chunk compare fairly.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

_PROMPTS = [
    "Hello, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Streams of tokens flow through the gateway to every tenant.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 and letters a b c d e f g.",
    "Tell me about the fox and the dog.",
    "I am fine, thank you very much! And you?",
    "Count: 9 8 7 6 5 4 3 2 1 0.",
    "Letters a b c d e f g, then the lazy dog again.",
]


@dataclass(slots=True)
class Sample:
    ok: bool
    e2e_s: float
    ttft_s: float | None = None
    completion_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    target: str
    mode: str
    requests: int
    errors: int
    wall_s: float
    rps: float
    tok_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    e2e_p50_ms: float
    e2e_p99_ms: float


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class StreamTally:
    """Reads an SSE stream line by line: when content first came, and the usage."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.ttft_s: float | None = None
        self.completion_tokens = 0
        self.done = False

    def feed(self, line: bytes, now: float) -> None:
        line = line.strip()
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return
        event = json.loads(data)
        usage = event.get("usage")
        if usage:
            self.completion_tokens = int(usage.get("completion_tokens", 0))
        # The first chunk often carries only the role; TTFT waits for text.
        if self.ttft_s is None and any(_chunk_text(choice) for choice in event.get("choices") or ()):
            self.ttft_s = now - self.started


def _chunk_text(choice: dict[str, object]) -> str:
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return text if isinstance(text, str) else ""


def summarize(target: str, mode: str, samples: list[Sample], wall_s: float) -> Row:
    good = [s for s in samples if s.ok]
    ttfts = [s.ttft_s * 1000 for s in good if s.ttft_s is not None]
    e2e = [s.e2e_s * 1000 for s in good]
    return Row(
        target=target,
        mode=mode,
        requests=len(samples),
        errors=len(samples) - len(good),
        wall_s=round(wall_s, 3),
        rps=round(len(good) / wall_s, 2),
        tok_s=round(sum(s.completion_tokens for s in good) / wall_s, 1),
        ttft_p50_ms=round(percentile(ttfts, 50), 1) if ttfts else None,
        ttft_p99_ms=round(percentile(ttfts, 99), 1) if ttfts else None,
        e2e_p50_ms=round(percentile(e2e, 50), 1),
        e2e_p99_ms=round(percentile(e2e, 99), 1),
    )


def fastest(rows: list[Row], targets: Sequence[str]) -> list[Row]:
    """Per target and mode, the pass with the most requests/s (the least disturbed), in ``targets`` order."""
    best: dict[tuple[str, str], Row] = {}
    for row in rows:
        key = (row.target, row.mode)
        if key not in best or row.rps > best[key].rps:
            best[key] = row
    return sorted(best.values(), key=lambda row: (targets.index(row.target), row.mode != "non-stream"))


def request_body(model: str, index: int, max_tokens: int, stream: bool) -> dict[str, object]:
    """Chat completion number ``index`` of the fixed load: greedy, exactly ``max_tokens`` long."""
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": _PROMPTS[index % len(_PROMPTS)]}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "ignore_eos": True,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, object], stream: bool) -> Sample:
    started = time.perf_counter()
    try:
        async with session.post(url, json=body) as response:
            if not stream:
                payload = await response.json()
                tokens = int(payload.get("usage", {}).get("completion_tokens", 0)) if response.status == 200 else 0
                return Sample(response.status == 200, time.perf_counter() - started, completion_tokens=tokens)
            tally = StreamTally(started)
            async for line in response.content:
                tally.feed(line, time.perf_counter())
            ok = response.status == 200 and tally.done
            return Sample(ok, time.perf_counter() - started, tally.ttft_s, tally.completion_tokens)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return Sample(False, time.perf_counter() - started)


async def run_load(
    url: str,
    bodies: list[dict[str, object]],
    *,
    concurrency: int,
    stream: bool,
    headers: dict[str, str],
    request_timeout_s: float = 300.0,
) -> tuple[list[Sample], float]:
    """Send every body, at most ``concurrency`` at a time; (samples, wall seconds)."""
    samples: list[Sample] = []
    pending = iter(bodies)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def worker() -> None:
            # Workers share one iterator, so each body is sent exactly once.
            for body in pending:
                samples.append(await _one(session, url, body, stream))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started
