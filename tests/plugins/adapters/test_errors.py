"""404, 409, 422 and refused credentials end the call at once, as clear errors that never carry the token."""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from sluicegate_adapters import (
    BadRequest,
    Conflict,
    NotFound,
    ScmClient,
    ScmError,
    Unauthorized,
    Unprocessable,
    make_client,
)

from tests.fakes.scm import FakeAzureDevOps, FakeScm
from tests.plugins.adapters.conftest import POLICY, FakeClock


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, BadRequest), (401, Unauthorized), (403, Unauthorized), (404, NotFound), (409, Conflict), (422, Unprocessable)],
)
async def test_client_errors_are_mapped_and_not_retried(
    client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock, status: int, error: type[ScmError]
) -> None:
    fake.fail_next(1, status=status)

    with pytest.raises(error) as caught:
        await client.get_pull_request(repo_name, 1)

    assert type(caught.value) is error
    assert not caught.value.retryable
    assert caught.value.scm_status == status
    assert caught.value.message.startswith(f"{fake.provider}: GET ")
    assert f"answered {status}" in caught.value.message
    assert len(fake.requests) == 1
    assert clock.sleeps == []


async def test_unknown_pull_request_is_not_found(client: ScmClient, fake: FakeScm, repo_name: str, clock: FakeClock) -> None:
    with pytest.raises(NotFound) as caught:
        await client.get_pull_request(repo_name, 999)

    assert len(fake.requests) == 1
    assert clock.sleeps == []
    assert "999" in caught.value.message


async def test_unknown_repository_is_not_found(client: ScmClient, fake: FakeScm, provider: str) -> None:
    other = {"github": "octo/nothing", "gitlab": "group/nothing", "ado": "proj/nothing"}[provider]

    with pytest.raises(NotFound):
        await client.upsert_comment(other, 1, "review:x", "body")

    assert fake.writes == []


@pytest.mark.parametrize("provider", ["github"])
async def test_github_422_for_a_commit_it_does_not_know(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    with pytest.raises(Unprocessable, match="No commit found for SHA"):
        await client.set_status(repo_name, "f" * 40, "sluicegate/review", "success")

    assert len(fake.requests) == 1


@pytest.mark.parametrize("provider", ["github"])
async def test_github_409_when_the_file_moved_under_us(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    with pytest.raises(Conflict, match="does not match"):
        await client.transport.call(
            "PUT", f"/repos/{repo_name}/contents/README.md", dict[str, object],
            body={"message": "m", "content": base64.b64encode(b"x").decode(), "branch": "main", "sha": "0" * 40},
        )  # fmt: skip


@pytest.mark.parametrize("provider", ["gitlab"])
async def test_gitlab_409_for_a_second_open_merge_request(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    fake.repos[repo_name].open_pull_request("feature")

    with pytest.raises(Conflict, match="Another open merge request already exists"):
        await client.transport.call(
            "POST", "/projects/group%2Fsub%2Fwidgets/merge_requests", dict[str, object],
            body={"source_branch": "feature", "target_branch": "main", "title": "again"},
        )  # fmt: skip


@pytest.mark.parametrize("provider", ["ado"])
async def test_ado_409_for_a_stale_push(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    push = {
        "refUpdates": [{"name": "refs/heads/main", "oldObjectId": "1" * 40}],
        "commits": [{"comment": "m", "changes": [{"changeType": "add", "item": {"path": "/x"}, "newContent": {"content": "x"}}]}],
    }
    with pytest.raises(Conflict, match="TF401028"):
        await client.transport.call(
            "POST", "/proj/_apis/git/repositories/widgets/pushes", dict[str, object], params={"api-version": "7.1"}, body=push
        )


async def test_wrong_token_is_unauthorized_and_never_shown(
    provider: str, fake: FakeScm, repo_name: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "ghp_NotTheRightToken0123456789abcdef"
    client = make_client(provider, secret, fake.base_url, policy=POLICY, clock=clock.clock())
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(Unauthorized) as caught:
            await client.upsert_comment(repo_name, 1, "review:x", "body")
    finally:
        await client.close()

    assert not caught.value.retryable
    assert len(fake.requests) == 1
    encoded = base64.b64encode(f":{secret}".encode()).decode()
    for text in (str(caught.value), repr(caught.value), repr(client), repr(client.transport), caplog.text):
        assert secret not in text
        assert encoded not in text


@pytest.mark.parametrize("provider", ["ado"])
async def test_ado_sign_in_page_is_unauthorized(provider: str, repo_name: str, clock: FakeClock) -> None:
    fake = FakeAzureDevOps(sign_in_page=True)
    await fake.start()
    client = make_client(provider, "wrong", fake.base_url, policy=POLICY, clock=clock.clock())
    try:
        with pytest.raises(Unauthorized, match="credentials were refused"):
            await client.get_pull_request(repo_name, 1)
    finally:
        await client.close()
        await fake.close()


async def test_token_never_in_logs_during_retries(
    client: ScmClient, fake: FakeScm, repo_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.repos[repo_name].open_pull_request("feature")
    fake.throttle(times=1, retry_after="3")
    await client.upsert_comment(repo_name, 1, "review:x", "body")
    fake.fail_next(1, status=502)
    await client.upsert_comment(repo_name, 1, "review:x", "body 2")

    assert "retrying in 3.00s" in caplog.text
    assert fake.token not in caplog.text


@pytest.fixture
async def echoing_server() -> AsyncIterator[str]:
    """A server that quotes the Authorization header back in its error: the client must scrub it."""

    async def handler(request: web.Request) -> web.Response:
        said = f"token {request.headers.get('Authorization', '')} / {request.headers.get('PRIVATE-TOKEN', '')} is not valid"
        return web.json_response({"message": said}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def test_a_token_quoted_back_by_the_provider_is_scrubbed(provider: str, repo_name: str, echoing_server: str) -> None:
    secret = "glpat-QuotedBackSecret0123456789"
    client = make_client(provider, secret, echoing_server, policy=POLICY)
    try:
        with pytest.raises(NotFound) as caught:
            await client.get_pull_request(repo_name, 1)
    finally:
        await client.close()

    assert "***" in caught.value.message
    assert secret not in caught.value.message
    assert base64.b64encode(f":{secret}".encode()).decode() not in caught.value.message


@pytest.fixture
async def link_elsewhere() -> AsyncIterator[str]:
    """A listing whose next page is on another host: following it would hand that host the token."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response([], headers={"Link": '<http://elsewhere.example/repos/o/r/issues/1/comments?page=2>; rel="next"'})

    app = web.Application()
    app.router.add_get("/repos/o/r/issues/1/comments", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def test_a_next_page_on_another_host_is_not_followed(link_elsewhere: str) -> None:
    client = make_client("github", "secret-token", link_elsewhere, policy=POLICY)
    try:
        with pytest.raises(ScmError, match="refusing to follow a link off"):
            await client.upsert_comment("o/r", 1, "review:x", "body")
    finally:
        await client.close()


@pytest.fixture
async def redirecting() -> AsyncIterator[str]:
    """A renamed repository (GitHub's 301/307 to the new name), and one that moved to another host."""

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"/repos/o/new-name/pulls/{request.match_info['n']}")

    async def elsewhere(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("http://elsewhere.example/repos/o/r/pulls/1")

    async def pull(request: web.Request) -> web.Response:
        side = {"ref": "feature", "sha": "a" * 40}
        return web.json_response({"number": 1, "state": "open", "title": "t", "head": side, "base": {"ref": "main"}})

    app = web.Application()
    app.router.add_get("/repos/o/old-name/pulls/{n}", moved)
    app.router.add_get("/repos/o/gone/pulls/{n}", elsewhere)
    app.router.add_get("/repos/o/new-name/pulls/{n}", pull)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def test_redirects_are_followed_on_the_same_host_only(redirecting: str) -> None:
    client = make_client("github", "secret-token", redirecting, policy=POLICY)
    try:
        assert (await client.get_pull_request("o/old-name", 1)).head == "feature"
        with pytest.raises(ScmError, match="refusing to follow a link off"):
            await client.get_pull_request("o/gone", 1)
    finally:
        await client.close()
