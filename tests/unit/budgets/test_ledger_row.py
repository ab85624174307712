"""Spool lines from every release decode to today's LedgerRow; malformed ones are refused."""

from __future__ import annotations

import msgspec
import pytest

from budgets.ledger_row import LedgerRow, decode_spooled

ROW = LedgerRow("r1", 1_700_000_000_000_001, "acme", "k1", "gpt", "dep", "openai", 10, 5, 2, 2**62 + 3, 200,
                1_700_000_000_250_001, 250.0, 12.5, None, "cheapest", {"EMAIL_ADDRESS": 1}, "ab" * 16, True,
                42, "candidate")  # fmt: skip


def _line(**changes: object) -> bytes:
    data = msgspec.to_builtins(ROW)
    for name, value in changes.items():
        if value is msgspec.UNSET:
            del data[name]
        else:
            data[name] = value
    return msgspec.json.encode(data)


def test_a_current_line_decodes_to_the_row_it_was() -> None:
    assert decode_spooled(msgspec.json.encode(ROW)) == ROW


def test_a_line_spooled_before_config_versions_runs_on_version_0_outside_any_canary() -> None:
    row = decode_spooled(_line(config_version=msgspec.UNSET, arm=msgspec.UNSET))
    assert row == msgspec.structs.replace(ROW, config_version=0, arm=None)


def test_a_line_from_the_first_release_with_iso_times_and_no_config_version_decodes() -> None:
    line = _line(
        started_us=msgspec.UNSET, finished_us=msgspec.UNSET, config_version=msgspec.UNSET, arm=msgspec.UNSET,
        started_at="2023-11-14T22:13:20.000001Z", finished_at="2023-11-14T22:13:20.250001+00:00",
    )  # fmt: skip
    assert decode_spooled(line) == msgspec.structs.replace(ROW, config_version=0, arm=None)


@pytest.mark.parametrize(
    "changes",
    [{"arm": 5}, {"config_version": None}, {"config_version": "7"}, {"stream": msgspec.UNSET}],
    ids=["arm-not-text", "version-null", "version-text", "older-field-missing"],
)
def test_a_line_with_a_wrong_or_missing_value_is_refused_not_defaulted(changes: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_spooled(_line(**changes))
