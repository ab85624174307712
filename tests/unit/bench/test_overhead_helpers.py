"""The overhead benchmark's pieces that run without wrk or servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.instructions import _total_instructions
from bench.overhead_report import (
    Row,
    median_rows,
    paired,
    percent_of_passthrough,
    render,
)
from bench.overhead_targets import bench_key_hash, request_body, sluicegate_config
from bench.wrk import lua_script, lua_string, parse_output
from core.config_check import decode_config


def test_lua_long_string_cannot_be_closed_by_its_text() -> None:
    assert lua_string('{"a":1}') == '[[\n{"a":1}]]'
    tricky = lua_string("x]]y]=]z")
    assert tricky.startswith("[==[") and tricky.endswith("]==]")


def test_lua_script_sets_method_body_and_headers() -> None:
    script = lua_script(b'{"model":"m"}', {"Authorization": "Bearer k"})
    assert 'wrk.method = "POST"' in script
    assert 'wrk.body = [[\n{"model":"m"}]]' in script
    assert "wrk.headers[ [[\nAuthorization]] ] = [[\nBearer k]]" in script
    assert "done = function(summary, latency, requests)" in script


def test_parse_output_reads_the_result_line() -> None:
    line = 'WRK_RESULT {"requests":5000,"duration_us":2000000,"p50_us":1500.0,"p99_us":9000.0,"non_2xx":3,"socket_errors":2}'
    result = parse_output("Running 2s test\n" + line + "\n")
    assert result.rps == 2500.0
    assert (result.p50_ms, result.p99_ms, result.errors) == (1.5, 9.0, 5)
    with pytest.raises(RuntimeError, match="no result line"):
        parse_output("Running 2s test\n")


def test_request_bodies_ask_for_usage_only_when_streaming() -> None:
    assert "stream" not in json.loads(request_body(stream=False))
    streamed = json.loads(request_body(stream=True))
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}


def test_sluicegate_config_is_accepted_by_the_gateway() -> None:
    key_hash = bench_key_hash()
    text = sluicegate_config("http://127.0.0.1:9100/v1", key_hash)
    config = decode_config(text.encode(), "sluicegate.yaml")
    assert config.deployments[0].base_url == "http://127.0.0.1:9100/v1"
    assert config.models[0].alias == "fake-model"
    assert config.tenants[0].keys[0].hash == key_hash
    # The foundation: no limits, no budgets, no ledger.
    tenant = config.tenants[0]
    assert (tenant.limits.rpm, tenant.budgets, config.state.ledger) == (None, [], "off")
    assert config.server.loop_lag_interval_s == 0.1  # the gateway's default, unless asked
    sampled = decode_config(sluicegate_config("http://127.0.0.1:9100/v1", key_hash, "all", 0.01).encode(), "s.yaml")
    assert sampled.server.loop_lag_interval_s == 0.01 and sampled.state.ledger == "sqlite"


def test_each_feature_set_turns_on_what_it_names() -> None:
    limits = decode_config(sluicegate_config("http://127.0.0.1:9/v1", bench_key_hash(), "limits").encode(), "l.yaml")
    assert limits.tenants[0].limits.rpm and limits.tenants[0].limits.tpm and limits.tenants[0].limits.max_concurrent
    assert (limits.tenants[0].budgets, limits.state.ledger) == ([], "off")
    budgets = decode_config(sluicegate_config("http://127.0.0.1:9/v1", bench_key_hash(), "budgets").encode(), "b.yaml")
    assert {b.kind for b in budgets.tenants[0].budgets} == {"money", "tokens"} and budgets.tenants[0].limits.rpm is None
    assert budgets.state.ledger == "sqlite"
    every = decode_config(sluicegate_config("http://127.0.0.1:9/v1", bench_key_hash(), "all").encode(), "a.yaml")
    assert every.tenants[0].limits.rpm and len(every.tenants[0].budgets) == 2 and every.state.ledger == "sqlite"
    with pytest.raises(ValueError):
        sluicegate_config("http://127.0.0.1:9/v1", bench_key_hash(), "everything")


def test_the_quiet_full_pipeline_differs_only_by_its_access_log() -> None:
    every = decode_config(sluicegate_config("http://127.0.0.1:9/v1", bench_key_hash(), "all", 0.01).encode(), "a.yaml")
    quiet = decode_config(sluicegate_config("http://127.0.0.1:9/v1", bench_key_hash(), "all-quiet", 0.01).encode(), "q.yaml")
    assert every.server.access_log and not quiet.server.access_log
    assert quiet.server.loop_lag_interval_s == 0.01
    assert (quiet.tenants, quiet.state, quiet.deployments) == (every.tenants, every.state, every.deployments)
    assert sluicegate_config("http://127.0.0.1:9/v1", bench_key_hash(), "all-quiet").replace(", access_log: false", "") == (
        sluicegate_config("http://127.0.0.1:9/v1", bench_key_hash(), "all")
    )


def test_the_table_reports_what_the_access_log_costs() -> None:
    rows = [Row("sg+all", "non-stream", 4000.0, 10.0, 20.0, 0, 100.0), Row("sg+all, no log", "non-stream", 4400.0, 9.0, 18.0, 0, 90.0)]
    table = render([rows])
    assert "full pipeline without its access log, req/s as % of sg+all: non-stream 110.0%" in table
    assert "full pipeline without its access log, CPU/req as % of sg+all: non-stream 90.0%" in table


def test_table_reports_sluicegate_as_percent_of_passthrough() -> None:
    rows = [
        Row("passthrough", "non-stream", 4000.0, 10.0, 20.0, 0, 200.0),
        Row("sluicegate", "non-stream", 3000.0, 12.0, 25.0, 0, 260.0),
        Row("passthrough", "stream", 2000.0, 30.0, 60.0, 0, 500.0),
        Row("sg+all", "non-stream", 2700.0, 13.0, 27.0, 0, 286.0),
        Row("sg+limits", "non-stream", 2850.0, 13.0, 27.0, 0, 273.0),
    ]
    assert percent_of_passthrough(rows) == {"non-stream": 75.0}
    table = render([rows])
    assert "sluicegate req/s as % of passthrough: non-stream 75.0%" in table
    assert "with limits+budgets+ledger, req/s as % of sluicegate: non-stream 90.0%" in table
    assert "sluicegate CPU/req as % of passthrough: non-stream 130.0%" in table
    assert "limits+budgets+ledger CPU/req as % of sluicegate: non-stream 110.0%" in table
    assert "with limits, req/s as % of sluicegate: non-stream 95.0%" in table
    assert "limits CPU/req as % of sluicegate: non-stream 105.0%" in table
    assert table.splitlines()[0].split() == ["target", "mode", "req/s", "p50", "ms", "p99", "ms", "CPU", "us/req", "errors"]


def test_rounds_give_medians_and_within_round_ratios() -> None:
    def round_of(scale: float, limits_cpu: float) -> list[Row]:
        return [
            Row("sluicegate", "non-stream", 3000.0 / scale, 12.0, 25.0, 0, 200.0 * scale),
            Row("sg+limits", "non-stream", 2900.0 / scale, 12.0, 25.0, 1, limits_cpu * scale),
        ]

    # The machine slows down between rounds; each round's ratio still compares like with like.
    rounds = [round_of(1.0, 210.0), round_of(1.5, 204.0), round_of(1.2, 230.0)]
    medians = median_rows(rounds)
    assert [(r.target, r.cpu_us, r.errors) for r in medians] == [("sluicegate", 240.0, 0), ("sg+limits", 276.0, 3)]
    assert paired(rounds, "sluicegate-limits", "sluicegate", "cpu_us") == {"non-stream": (105.0, 102.0, 115.0)}
    table = render(rounds)
    assert "medians of 3 rounds" in table
    assert "limits CPU/req as % of sluicegate: non-stream 105.0% [102.0-115.0]" in table


def test_instruction_totals_are_read_from_a_callgrind_dump(tmp_path: Path) -> None:
    dump = tmp_path / "x.callgrind.1"
    dump.write_text("# callgrind format\nversion: 1\nevents: Ir\nfl=(1) a.c\nfn=(1) f\n3 12\nsummary: 1234567\ntotals: 1234567\n")
    assert _total_instructions(dump) == 1_234_567
    (tmp_path / "empty").write_text("events: Ir\n")
    with pytest.raises(RuntimeError, match="no instruction total"):
        _total_instructions(tmp_path / "empty")


class _FakeServer:
    """CPU seconds that grow by a fixed cost per request of the wrk run that drove it."""

    def __init__(self, cost_us: float) -> None:
        self.cost_us = cost_us
        self.cpu = 0.0
        self.pinned: set[int] | None = None

    def cpu_seconds(self) -> float:
        return self.cpu

    def pin(self, cpus: set[int]) -> None:
        self.pinned = cpus


def test_pairs_swap_places_every_round_and_keep_base_and_target_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    import bench.paired as paired_mod
    from bench.wrk import WrkResult

    base_server, target_server = _FakeServer(100.0), _FakeServer(110.0)
    orders: list[list[str]] = []

    def fake_run_together(sides, duration_s, concurrency, cpus):  # type: ignore[no-untyped-def]
        orders.append([side.url for side in sides])
        # The first place is 10% dearer, whoever holds it: the swap must cancel that out.
        results = []
        for place, side in enumerate(sides):
            requests = 1000
            side.server.cpu += side.server.cost_us * (1.1 if place == 0 else 1.0) * requests / 1e6
            results.append(WrkResult(requests, duration_s, 1.0, 2.0, 0))
        return results

    monkeypatch.setattr(paired_mod, "run_together", fake_run_together)
    base = paired_mod.Side(base_server, "base", b"", {})  # type: ignore[arg-type]
    target = paired_mod.Side(target_server, "target", b"", {})  # type: ignore[arg-type]
    result = paired_mod.measure_pair(
        base, target, ("t", "b", "non-stream"), rounds=4, duration_s=1, warmup_s=1, concurrency=1, cpus=({0}, {1})
    )
    assert orders[1:] == [["base", "target"], ["target", "base"]] * 2  # after the warm-up, alternating
    assert result.base_cpu_us == [110.0, 100.0, 110.0, 100.0]
    assert result.target_cpu_us == [110.0, 121.0, 110.0, 121.0]
    ratios = sorted(result.ratios)
    assert ratios[0] == pytest.approx(100.0) and ratios[-1] == pytest.approx(121.0)
    assert base_server.pinned == target_server.pinned == {1}
