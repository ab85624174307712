"""The workflow operations against each fake: branch, commit, draft pull request, status, delete; each run twice."""

from __future__ import annotations

import pytest
from sluicegate_adapters import Conflict, NotFound, ScmClient

from tests.fakes.scm import FakeScm
from tests.fakes.scm.model import blob_sha

BRANCH = "sluicegate/fix-42"


async def test_branch_commit_and_draft_pull_request(client: ScmClient, fake: FakeScm, repo_name: str, provider: str) -> None:
    repo = fake.repos[repo_name]
    main = repo.branches["main"]

    branch = await client.create_branch(repo_name, BRANCH)
    assert (branch.name, branch.sha, branch.action) == (BRANCH, main, "created")
    assert (await client.create_branch(repo_name, BRANCH, "main")).action == "unchanged"

    added = await client.commit_file(repo_name, BRANCH, "docs/fix.md", "the fix\n", "Add the fix")
    assert added.action == "created"
    assert added.sha == repo.branches[BRANCH] != main
    assert repo.commits[added.sha].files["docs/fix.md"] == b"the fix\n"
    assert repo.commits[added.sha].parent == main

    same = await client.commit_file(repo_name, BRANCH, "docs/fix.md", b"the fix\n", "Add the fix")
    assert (same.action, same.sha) == ("unchanged", added.sha)
    edited = await client.commit_file(repo_name, BRANCH, "docs/fix.md", "the fix, better\n", "Improve the fix")
    assert edited.action == "updated"
    assert repo.commits[edited.sha].parent == added.sha
    assert len(fake.writes_of("commit.create")) == 2
    assert "docs/fix.md" not in repo.commits[main].files

    made = await client.upsert_draft_pull_request(repo_name, BRANCH, "main", "Fix 42", "What changed.", issue=42)
    pr = made.pull_request
    assert made.action == "created"
    assert (pr.head, pr.base, pr.state, pr.draft) == (BRANCH, "main", "open", True)
    assert pr.head_sha == edited.sha
    if provider == "gitlab":
        assert pr.title == "Draft: Fix 42"
    else:
        assert pr.title == "Fix 42"
    if provider == "ado":
        assert repo.pulls[pr.number].work_items == ["42"]
        assert pr.body == "What changed."
    else:
        assert pr.body == "What changed.\n\nCloses #42"

    again = await client.upsert_draft_pull_request(repo_name, BRANCH, "main", "Fix 42", "What changed.", issue=42)
    assert (again.action, again.pull_request.number) == ("unchanged", pr.number)
    retitled = await client.upsert_draft_pull_request(repo_name, BRANCH, "main", "Fix 42, take two", "Now better.")
    assert (retitled.action, retitled.pull_request.number) == ("updated", pr.number)
    assert retitled.pull_request.draft
    assert len(fake.writes_of("pull.create")) == 1
    assert len(fake.writes_of("pull.update")) == 1
    assert len(repo.pulls) == 1

    fetched = await client.get_pull_request(repo_name, pr.number)
    assert fetched == retitled.pull_request
    assert fetched.title.endswith("Fix 42, take two")


async def test_status_on_the_head_commit(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    repo = fake.repos[repo_name]
    pull = repo.open_pull_request("feature")
    sha = repo.branches["feature"]

    ref = await client.set_status(repo_name, sha, "sluicegate/review", "pending", "Reviewing", "https://ci.example/1", pr=pull.number)
    done = await client.set_status(repo_name, sha, "sluicegate/review", "success", "x" * 300, "https://ci.example/1", pr=pull.number)

    assert (ref.sha, ref.context, ref.state) == (sha, "sluicegate/review", "pending")
    assert done.state == "success"
    assert [s.context for s in repo.statuses] == ["sluicegate/review"] * 2
    assert [s.sha for s in repo.statuses] == [sha, sha]
    assert repo.statuses[-1].state in ("success", "succeeded")
    if fake.provider == "ado":
        assert [s.pull for s in repo.statuses] == [pull.number] * 2
    if fake.provider == "github":
        assert len(repo.statuses[-1].description) == 140


async def test_status_set_twice_to_the_same_state(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    """GitLab answers 400 "Cannot transition status" to a repeat; the client reads the status back instead."""
    sha = fake.repos[repo_name].branches["main"]

    first = await client.set_status(repo_name, sha, "sluicegate/review", "failure", "1 finding")
    second = await client.set_status(repo_name, sha, "sluicegate/review", "failure", "1 finding")

    assert second.state == first.state == "failure"
    assert second.context == "sluicegate/review"


@pytest.mark.parametrize("provider", ["ado"])
async def test_ado_commit_status_without_a_pull_request(fake: FakeScm, client: ScmClient, repo_name: str) -> None:
    sha = fake.repos[repo_name].branches["main"]
    await client.set_status(repo_name, sha, "review", "error", "boom")
    assert fake.repos[repo_name].statuses[-1].pull is None
    assert fake.writes_of("status.create")[-1].path.endswith(f"/commits/{sha}/statuses")


async def test_delete_branch_then_delete_again(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    await client.create_branch(repo_name, BRANCH)

    assert await client.delete_branch(repo_name, BRANCH) is True
    assert await client.delete_branch(repo_name, BRANCH) is False

    assert BRANCH not in fake.repos[repo_name].branches
    assert len(fake.writes_of("branch.delete")) == 1


async def test_branch_existing_at_another_commit_is_a_conflict(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    repo = fake.repos[repo_name]
    repo.open_pull_request("taken")

    with pytest.raises(Conflict, match="exists at another commit"):
        await client.create_branch(repo_name, "taken", "main")

    assert fake.writes_of("branch.create") == []


async def test_branch_from_a_commit_sha(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    repo = fake.repos[repo_name]
    first = repo.branches["main"]
    repo.commit("main", {"later.txt": b"later"}, "later")

    made = await client.create_branch(repo_name, "from-sha", first)

    assert made.sha == first == repo.branches["from-sha"]


async def test_branch_from_a_missing_branch_is_not_found(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    with pytest.raises(NotFound, match="no branch 'nope'"):
        await client.create_branch(repo_name, BRANCH, "nope")

    assert fake.writes == []


async def test_commit_file_keeps_other_files_and_binary_content(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    repo = fake.repos[repo_name]
    await client.create_branch(repo_name, BRANCH)
    data = bytes(range(256))

    made = await client.commit_file(repo_name, BRANCH, "/bin/blob.dat", data, "binary")

    assert made.path == "bin/blob.dat"
    files = repo.commits[made.sha].files
    assert files["bin/blob.dat"] == data
    assert files["README.md"] == b"# fake\n"
    assert blob_sha(data) == blob_sha(files["bin/blob.dat"])


async def test_upsert_draft_pull_request_after_someone_opened_one(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    """An open pull request for the head, opened by hand and not draft, is updated and stays ready."""
    repo = fake.repos[repo_name]
    pull = repo.open_pull_request("feature", title="Hand made")

    done = await client.upsert_draft_pull_request(repo_name, "feature", "main", "Sluicegate's title", "body")

    assert done.action == "updated"
    assert done.pull_request.number == pull.number
    assert not done.pull_request.draft
    assert pull.title == "Sluicegate's title"
    assert fake.writes_of("pull.create") == []
