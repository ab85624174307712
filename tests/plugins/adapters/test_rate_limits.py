"""Rate limits and provider failures: waits asked for are slept exactly, long ones raised, 5xx retried."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from sluicegate_adapters import RateLimited, ScmClient, Unavailable, make_client

from tests.fakes.scm import FakeScm
from tests.plugins.adapters.conftest import NOW, POLICY, FakeClock


async def _comment(client: ScmClient, fake: FakeScm, repo_name: str) -> str:
    pull = fake.repos[repo_name].pulls.get(1) or fake.repos[repo_name].open_pull_request("feature")
    return (await client.upsert_comment(repo_name, pull.number, "review:rl", "body")).action


async def test_429_waits_the_retry_after_asked_for(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    fake.throttle(after=1, times=1, retry_after="7", status=429)

    assert await _comment(client, fake, repo_name) == "created"

    assert clock.sleeps == [7.0]
    assert [s.status for s in fake.requests].count(429) == 1
    assert len(fake.writes_of("comment.create")) == 1


async def test_retry_after_as_an_http_date(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    fake.throttle(times=1, retry_after=formatdate(NOW + 12, usegmt=True))

    await _comment(client, fake, repo_name)

    assert clock.sleeps == [12.0]


async def test_reset_header_wait(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    """No Retry-After: GitHub's x-ratelimit-reset, GitLab's RateLimit-Reset, ADO's X-RateLimit-Reset say when."""
    fake.throttle(times=1, retry_after=None, reset_at=NOW + 42)

    await _comment(client, fake, repo_name)

    assert clock.sleeps == [42.0]


async def test_a_wait_longer_than_allowed_is_raised_not_slept(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    fake.throttle(times=1, retry_after="3600")

    with pytest.raises(RateLimited) as caught:
        await _comment(client, fake, repo_name)

    assert caught.value.retry_after == 3600.0
    assert caught.value.retryable
    assert "3600s wait, longer than the 60s allowed" in caught.value.message
    assert clock.sleeps == []
    assert len(fake.requests) == 1
    assert fake.writes == []


async def test_a_far_reset_is_raised_not_slept(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    fake.throttle(times=1, retry_after=None, reset_at=NOW + 3000)

    with pytest.raises(RateLimited) as caught:
        await _comment(client, fake, repo_name)

    assert caught.value.retry_after == 3000.0
    assert clock.sleeps == []


async def test_rate_limit_that_never_lifts_ends_after_max_attempts(
    client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock
) -> None:
    fake.throttle(times=100, retry_after="2")

    with pytest.raises(RateLimited) as caught:
        await _comment(client, fake, repo_name)

    assert caught.value.retry_after == 2.0
    assert clock.sleeps == [2.0] * (POLICY.max_attempts - 1)
    assert len(fake.requests) == POLICY.max_attempts


@pytest.mark.parametrize("provider", ["github"])
@pytest.mark.parametrize(("retry_after", "slept"), [("5", 5.0), (None, 60.0)])
async def test_github_secondary_rate_limit(
    client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock, retry_after: str | None, slept: float
) -> None:
    """A 403 secondary limit: retry-after if sent, else the minute GitHub's documentation asks for."""
    fake.throttle(times=1, secondary=True, retry_after=retry_after)

    await _comment(client, fake, repo_name)

    assert fake.requests[0].status == 403
    assert clock.sleeps == [slept]


@pytest.mark.parametrize("provider", ["github"])
async def test_github_primary_limit_as_403_with_reset(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    fake.throttle(times=1, retry_after=None, reset_at=NOW + 30, status=403)

    await _comment(client, fake, repo_name)

    assert clock.sleeps == [30.0]


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_retried_with_jittered_backoff_then_succeeds(
    client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock, status: int
) -> None:
    fake.repos[repo_name].open_pull_request("feature")
    fake.fail_next(2, status=status)

    assert await _comment(client, fake, repo_name) == "created"

    # full jitter with random() == 0.5: half of 1s, then half of 2s
    assert clock.sleeps == [0.5, 1.0]
    assert len(fake.writes_of("comment.create")) == 1


async def test_write_whose_answer_was_lost_is_not_repeated(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    """The retry runs the whole upsert again: its read finds the comment the failed call did not report."""
    pull = fake.repos[repo_name].open_pull_request("feature")
    await client.upsert_comment(repo_name, pull.number, "review:lost", "v1")
    fake.fail_next(1, status=502)

    ref = await client.upsert_comment(repo_name, pull.number, "review:lost", "v2")

    assert ref.action == "updated"
    assert len(fake.writes_of("comment.create")) == 1


async def test_5xx_that_persists_ends_in_unavailable(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    fake.fail_next(100, status=500)

    with pytest.raises(Unavailable) as caught:
        await client.get_pull_request(repo_name, 1)

    assert caught.value.scm_status == 500
    assert caught.value.retryable
    assert len(fake.requests) == POLICY.max_attempts
    assert clock.sleeps == [0.5, 1.0, 2.0]


async def test_connection_refused_is_retried_then_unavailable(provider: str, repo_name: str, clock: FakeClock) -> None:
    client = make_client(provider, "tok", "http://127.0.0.1:9/api", policy=POLICY, clock=clock.clock())
    try:
        with pytest.raises(Unavailable, match="ClientConnectorError"):
            await client.get_pull_request(repo_name, 1)
    finally:
        await client.close()
    assert len(clock.sleeps) == POLICY.max_attempts - 1


async def test_503_retry_after_is_honoured(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    fake.repos[repo_name].open_pull_request("feature")
    fake.fail_next(1, status=503, retry_after="4")

    await client.get_pull_request(repo_name, 1)

    assert clock.sleeps == [4.0]


async def test_503_asking_for_too_long_a_wait_is_raised(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    fake.fail_next(1, status=503, retry_after="900")

    with pytest.raises(Unavailable) as caught:
        await client.get_pull_request(repo_name, 1)

    assert caught.value.retry_after == 900.0
    assert clock.sleeps == []


async def test_quota_window_lifts_once_the_client_has_waited_for_the_reset(
    client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock
) -> None:
    """The fake refuses everything until its clock (the client's) reaches the reset the headers announced."""
    fake.repos[repo_name].open_pull_request("feature")
    fake.throttle(after=1, times=None, retry_after=None, reset_at=NOW + 25)

    ref = await client.upsert_comment(repo_name, 1, "review:window", "body")

    assert ref.action == "created"
    assert clock.sleeps == [25.0]
    assert [s.status for s in fake.requests].count(200) >= 1
    assert sum(1 for s in fake.requests if s.status in (403, 429)) == 1
