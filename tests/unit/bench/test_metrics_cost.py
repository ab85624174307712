"""``python -m bench.metrics_cost`` runs both cases and prints a figure for each."""

from __future__ import annotations

import re

import pytest

from bench.metrics_cost import main


def test_it_prints_one_process_and_a_worker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--requests", "50", "--passes", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["one process", "worker of several"]
    assert all(re.search(r"\d+\.\d\d us a request", line) for line in lines)
    assert "a copy into the files" in lines[1]
