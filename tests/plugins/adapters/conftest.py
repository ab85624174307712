"""Fixtures for the adapters' tests: a controlled clock, a started fake per provider, a client on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from sluicegate_adapters import Clock, RetryPolicy, ScmClient, make_client

from tests.fakes.scm import FakeScm, start_fake_scm

NOW = 1_800_000_000.0
PROVIDERS = ("github", "gitlab", "ado")
# a repository name in each provider's own form
REPOS = {"github": "octo/widgets", "gitlab": "group/sub/widgets", "ado": "proj/widgets"}
POLICY = RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=8.0, max_wait_s=60.0)


@dataclass
class FakeClock:
    """Time that moves only when the client sleeps; every sleep is recorded; jitter is always half."""

    t: float = NOW
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds

    def random(self) -> float:
        return 0.5

    def clock(self) -> Clock:
        return Clock(now=self.now, sleep=self.sleep, random=self.random)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def repo_name(provider: str) -> str:
    return REPOS[provider]


@pytest.fixture
async def fake(provider: str, repo_name: str, clock: FakeClock) -> AsyncIterator[FakeScm]:
    server = await start_fake_scm(provider, now=clock.now)
    server.add_repo(repo_name)
    yield server
    await server.close()


@pytest.fixture
async def client(provider: str, fake: FakeScm, clock: FakeClock) -> AsyncIterator[ScmClient]:
    scm = make_client(provider, fake.token, fake.base_url, policy=POLICY, clock=clock.clock())
    yield scm
    await scm.close()
