"""The pieces without a server: backoff, Retry-After parsing, markers, the factory."""

from __future__ import annotations

import pytest
from sluicegate_adapters import PROVIDERS, AzureDevOpsClient, GitHubClient, GitLabClient, RetryPolicy, make_client, marker_tag
from sluicegate_adapters.models import blob_sha, marked_body, with_issue_link
from sluicegate_adapters.retry import parse_retry_after, seconds_until_epoch

NOW = 1_800_000_000.0


def test_full_jitter_grows_to_its_cap() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0)
    assert [policy.backoff(n, lambda: 1.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert policy.backoff(3, lambda: 0.0) == 0.0
    assert policy.backoff(10_000, lambda: 0.5) == 4.0


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(max_wait_s=-1)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("Fri, 15 Jan 2027 08:00:30 GMT", 30.0),
        ("Fri, 15 Jan 2027 07:59:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    now = 1800000000.0  # Fri, 15 Jan 2027 08:00:00 GMT
    assert parse_retry_after(value, now) == seconds


def test_reset_epoch() -> None:
    assert seconds_until_epoch(str(int(NOW) + 42), NOW) == 42.0
    assert seconds_until_epoch(str(int(NOW) - 5), NOW) == 0.0
    assert seconds_until_epoch("later", NOW) is None
    assert seconds_until_epoch(None, NOW) is None


def test_marker_tag_and_body() -> None:
    assert marker_tag("review:pr-12") == "<!-- sluicegate:review:pr-12 -->"
    assert marked_body("k", "hello") == "<!-- sluicegate:k -->\nhello"
    assert marked_body("k", "<!-- sluicegate:k -->\nhello") == "<!-- sluicegate:k -->\nhello"
    for bad in ("", "a -->", "two\nlines", "-leading", "x" * 201):
        with pytest.raises(ValueError):
            marker_tag(bad)


def test_issue_link_is_added_once() -> None:
    assert with_issue_link("Body", 7) == "Body\n\nCloses #7"
    assert with_issue_link("Body\n\nCloses #7", 7) == "Body\n\nCloses #7"
    assert with_issue_link("", 7) == "Closes #7"
    assert with_issue_link("Body", None) == "Body"


def test_blob_sha_is_gits() -> None:
    # `printf 'hello\n' | git hash-object --stdin`
    assert blob_sha(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert blob_sha(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


async def test_factory() -> None:
    assert sorted(PROVIDERS) == ["ado", "github", "gitlab"]
    expected = {"github": GitHubClient, "gitlab": GitLabClient, "ado": AzureDevOpsClient}
    for name, cls in expected.items():
        client = make_client(name, "t", "https://example.test/api/")
        assert type(client) is cls
        assert client.provider == name
        assert client.transport.base_url == "https://example.test/api"
        await client.close()
    assert make_client("github", "t").transport.base_url == "https://api.github.com"
    assert make_client("gitlab", "t").transport.base_url == "https://gitlab.com/api/v4"
    with pytest.raises(ValueError, match="base URL is required"):
        make_client("ado", "t")
    with pytest.raises(ValueError, match="unknown SCM provider 'bitbucket'"):
        make_client("bitbucket", "t", "https://example.test")
    with pytest.raises(ValueError, match="token is required"):
        make_client("github", "")


async def test_bad_repository_names_are_refused_before_any_call() -> None:
    with pytest.raises(ValueError, match="'owner/name'"):
        await make_client("github", "t", "http://127.0.0.1:9").get_pull_request("just-a-name", 1)
    with pytest.raises(ValueError, match="'project/repository'"):
        await make_client("ado", "t", "http://127.0.0.1:9/org").get_pull_request("a/b/c", 1)
