"""--profile asks for py-spy up front (it is installed from the registry, not shipped)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.vllm_compare import _parse


def test_profile_without_py_spy_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no py-spy on it
    with pytest.raises(SystemExit):
        _parse(["--profile", str(tmp_path / "stacks")])
    assert "pip install py-spy" in capsys.readouterr().err


def test_profile_with_py_spy_on_path_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "py-spy"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _parse(["--profile", str(tmp_path / "stacks")]).profile == tmp_path / "stacks"
