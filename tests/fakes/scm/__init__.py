"""Fake GitHub, GitLab and Azure DevOps REST servers for the adapters' tests (see ``server.FakeScm``)."""

from __future__ import annotations

from typing import Any

from tests.fakes.scm.ado import FakeAzureDevOps
from tests.fakes.scm.github import FakeGitHub
from tests.fakes.scm.gitlab import FakeGitLab
from tests.fakes.scm.server import ApiError, FakeScm, Seen, Throttling, Write

FAKES: dict[str, type[FakeScm]] = {"github": FakeGitHub, "gitlab": FakeGitLab, "ado": FakeAzureDevOps}


async def start_fake_scm(provider: str, **options: Any) -> FakeScm:
    """A started fake for ``provider`` ("github", "gitlab", "ado"); ``close()`` it when done."""
    fake = FAKES[provider](**options)
    await fake.start()
    return fake


__all__ = ["FAKES", "ApiError", "FakeAzureDevOps", "FakeGitHub", "FakeGitLab", "FakeScm", "Seen", "Throttling", "Write", "start_fake_scm"]
