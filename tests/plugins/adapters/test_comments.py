"""upsert_comment against each provider's fake: one comment, created once, then edited in place."""

from __future__ import annotations

from sluicegate_adapters import ScmClient, marker_tag

from tests.fakes.scm import FakeScm
from tests.fakes.scm.model import Comment


async def test_comment_created_once_then_updated(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    pull = fake.repos[repo_name].open_pull_request("feature")

    first = await client.upsert_comment(repo_name, pull.number, "review:run-1", "Review: 2 findings")
    second = await client.upsert_comment(repo_name, pull.number, "review:run-1", "Review: 1 finding")

    assert (first.action, second.action) == ("created", "updated")
    assert first.id == second.id
    assert len(fake.writes_of("comment.create")) == 1
    assert len(fake.writes_of("comment.update")) == 1
    assert [c.body for c in pull.comments] == [f"{marker_tag('review:run-1')}\nReview: 1 finding"]


async def test_same_body_again_writes_nothing(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    pull = fake.repos[repo_name].open_pull_request("feature")
    await client.upsert_comment(repo_name, pull.number, "review:k", "same")
    writes = len(fake.writes)

    again = await client.upsert_comment(repo_name, pull.number, "review:k", "same")

    assert again.action == "unchanged"
    assert len(fake.writes) == writes


async def test_other_markers_and_comments_are_left_alone(client: ScmClient, fake: FakeScm, repo_name: str) -> None:
    pull = fake.repos[repo_name].open_pull_request("feature")
    pull.comments.append(Comment(id=fake.next_id(), body="a human says hi", thread=fake.next_id(), author="alice"))
    await client.upsert_comment(repo_name, pull.number, "review:a", "for a")

    await client.upsert_comment(repo_name, pull.number, "review:b", "for b")
    await client.upsert_comment(repo_name, pull.number, "review:a", "for a, again")

    bodies = sorted(c.body for c in pull.comments)
    assert bodies == sorted(["a human says hi", f"{marker_tag('review:a')}\nfor a, again", f"{marker_tag('review:b')}\nfor b"])
    assert len(fake.writes_of("comment.create")) == 2


async def test_marker_found_past_the_first_page(client: ScmClient, fake: FakeScm, repo_name: str, provider: str) -> None:
    """GitHub and GitLab page their comment lists; the marked comment is on the third page."""
    pull = fake.repos[repo_name].open_pull_request("feature")
    for i in range(230):
        pull.comments.append(Comment(id=fake.next_id(), body=f"noise {i}", thread=fake.next_id(), author="alice"))
    pull.comments.append(Comment(id=fake.next_id(), body=f"{marker_tag('review:deep')}\nold", thread=fake.next_id()))

    ref = await client.upsert_comment(repo_name, pull.number, "review:deep", "new")

    assert ref.action == "updated"
    assert fake.writes_of("comment.create") == []
    assert pull.comments[-1].body == f"{marker_tag('review:deep')}\nnew"
    listings = [s for s in fake.requests if s.method == "GET"]
    assert len(listings) == (1 if provider == "ado" else 3)
