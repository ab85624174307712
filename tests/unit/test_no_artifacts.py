"""No downloaded artifact (wheel, archive, model file) is committed.

.gitignore names them; `git add -f` or a file committed before the pattern
existed gets past it, so the check is on what git tracks.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_no_tracked_file_matches_gitignore() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        [git, "ls-files", "--cached", "--ignored", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    # A deletion not yet committed is already gone.
    tracked = [path for path in listed.split("\0") if path and (ROOT / path).exists()]
    assert tracked == []
