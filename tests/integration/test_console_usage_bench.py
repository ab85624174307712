"""The console benchmark end to end on a small ledger: a real gateway, the real login form, a line per page."""

from __future__ import annotations

import pytest

from bench.console_usage import main, pages


def test_console_benchmark_times_every_page_on_a_small_ledger(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--rows", "3000", "--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["page", "cold"] for line in lines)
    for page in pages():
        found = [line for line in lines if line.startswith(page.label + " ")]
        assert len(found) == 1, page.label
        cold, median, worst, size, status, *reads = found[0][len(page.label) :].split()
        assert status == "200" and int(size.replace(",", "")) > 0 and reads
        assert float(cold) > 0 and float(median) == float(worst) > 0
