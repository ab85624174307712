"""The vLLM comparison's pieces that run without vLLM or servers."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from bench.chat_load import (
    Row,
    Sample,
    StreamTally,
    fastest,
    percentile,
    request_body,
    summarize,
)
from bench.vllm_compare import (
    EngineSettings,
    bench_key_hash,
    ratios,
    render,
    sluicegate_config,
    vllm_argv,
)
from core.config_check import decode_config


def _event(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n"


def _row(target: str, mode: str, rps: float, ttft: float | None = None, e2e: float = 100.0) -> Row:
    return Row(target, mode, 64, 0, 1.0, rps, rps * 32, ttft, ttft, e2e, e2e * 2)


def test_percentile_interpolates_between_ranks() -> None:
    values = [40.0, 10.0, 30.0, 20.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 99) == pytest.approx(39.7)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_ttft_waits_for_the_first_chunk_with_text() -> None:
    tally = StreamTally(started=10.0)
    tally.feed(b": keep-alive\n", 10.01)
    tally.feed(_event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}), 10.02)
    tally.feed(b"\n", 10.03)
    assert tally.ttft_s is None
    tally.feed(_event({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}), 10.25)
    tally.feed(_event({"choices": [{"index": 0, "delta": {"content": " there"}}]}), 10.5)
    assert tally.ttft_s == pytest.approx(0.25)
    assert not tally.done


def test_stream_tally_reads_usage_and_done() -> None:
    tally = StreamTally(started=0.0)
    tally.feed(_event({"choices": [{"index": 0, "text": "abc"}]}), 0.1)  # legacy completions shape
    tally.feed(_event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 32}}), 0.2)
    tally.feed(b"data: [DONE]\n", 0.3)
    assert tally.ttft_s == pytest.approx(0.1)
    assert tally.completion_tokens == 32
    assert tally.done


def test_summary_counts_only_answered_requests() -> None:
    samples = [Sample(True, 0.2, 0.05, 32), Sample(True, 0.4, 0.15, 32), Sample(False, 1.0)]
    row = summarize("sluicegate", "stream", samples, wall_s=0.5)
    assert (row.requests, row.errors) == (3, 1)
    assert (row.rps, row.tok_s) == (4.0, 128.0)
    assert (row.ttft_p50_ms, row.e2e_p50_ms) == (100.0, 300.0)
    unstreamed = summarize("vllm serve", "non-stream", [Sample(True, 0.2, None, 32)], wall_s=1.0)
    assert unstreamed.ttft_p50_ms is None and unstreamed.ttft_p99_ms is None


def test_fastest_keeps_the_best_pass_in_target_order() -> None:
    rows = [
        _row("sluicegate", "stream", 50.0),
        _row("vllm serve", "non-stream", 40.0),
        _row("sluicegate", "stream", 70.0),
        _row("vllm serve", "non-stream", 45.0),
        _row("sluicegate", "non-stream", 60.0),
    ]
    best = fastest(rows, ("vllm serve", "sluicegate"))
    assert [(r.target, r.mode, r.rps) for r in best] == [
        ("vllm serve", "non-stream", 45.0),
        ("sluicegate", "non-stream", 60.0),
        ("sluicegate", "stream", 70.0),
    ]


def test_ratios_and_table_put_sluicegate_over_vllm() -> None:
    rows = [
        _row("vllm serve", "stream", 40.0, ttft=50.0, e2e=200.0),
        _row("sluicegate", "stream", 50.0, ttft=40.0, e2e=150.0),
        _row("sluicegate", "non-stream", 60.0),
    ]
    got = ratios(rows)
    assert set(got) == {"stream"}  # no vLLM row to compare the non-streamed one with
    assert got["stream"]["rps"] == 1.25
    assert got["stream"]["ttft_p50"] == 0.8
    assert got["stream"]["e2e_p50"] == 0.75
    table = render(rows)
    assert "sluicegate / vllm serve (stream): rps 1.250x" in table
    assert table.splitlines()[3].split()[-4] == "-"  # no TTFT without streaming


def test_both_servers_get_the_same_engine_settings(tmp_path: Path) -> None:
    engine = EngineSettings(max_num_seqs=8)
    config = decode_config(sluicegate_config(tmp_path, bench_key_hash(), engine).encode(), "sluicegate.yaml")
    deployment = config.deployments[0]
    assert (deployment.provider, deployment.model, deployment.privacy) == ("vllm", "tiny", "self_hosted")
    assert config.models[0].alias == "tiny" and config.state.ledger == "off"
    options = deployment.options or {}
    argv = vllm_argv(tmp_path, 8123, engine)
    flags = dict(itertools.pairwise(argv))
    assert flags["--model"] == options["model_path"] == str(tmp_path)
    assert flags["--dtype"] == options["dtype"]
    assert int(flags["--max-model-len"]) == options["max_model_len"]
    assert int(flags["--max-num-seqs"]) == options["max_num_seqs"] == 8
    assert int(flags["--kv-cache-memory-bytes"]) == options["kv_cache_space_gib"] * (1 << 30)
    assert int(flags["--seed"]) == options["seed"]
    assert ("--enforce-eager" in argv) == options["enforce_eager"]
    assert flags["--served-model-name"] == deployment.model


def test_request_bodies_are_greedy_fixed_length_and_stream_usage() -> None:
    body = request_body("tiny", 3, 32, stream=False)
    assert (body["temperature"], body["max_tokens"], body["ignore_eos"]) == (0, 32, True)
    assert "stream" not in body
    assert request_body("tiny", 3, 32, stream=False) == body  # the same load every run
    streamed = request_body("tiny", 3, 32, stream=True)
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}
