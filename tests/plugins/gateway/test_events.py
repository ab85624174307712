"""Provider payloads --> one work item; rule matching; a missing field is a 400 that names it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sluicegate_gateway.events import delivery_id, describe, normalise
from sluicegate_gateway.options import default_rules
from sluicegate_gateway.payload import Doc

from core.errors import InvalidRequest
from tests.plugins.gateway import payloads


def _item(provider: Any, event_header: str | None, payload: dict[str, Any], repository: str) -> Any:
    headers = {"x-github-event": event_header.encode(), "x-gitlab-event": event_header.encode()} if event_header else {}
    doc = Doc(payload)
    described = describe(provider, headers, doc)
    rule = described.rule(default_rules(provider, "sluicegate"))
    return described, rule, (normalise(provider, described, doc, repository, "d-1") if rule is not None else None)


def test_github_pull_request_opened() -> None:
    described, rule, item = _item("github", "pull_request", payloads.github_pull_request(), "acme/api")
    assert described.repository == "acme/api" and rule is not None and rule.kind == "review"
    assert (item.subject, item.number, item.title, item.head_sha) == (
        "pull_request",
        42,
        "Add retry budget to the client",
        payloads.HEAD_SHA,
    )
    assert (item.head_branch, item.base_branch, item.labels, item.author) == ("retry-budget", "main", ["enhancement"], "octocat")
    assert item.body.startswith("Fixes #12.") and item.url == "https://github.com/acme/api/pull/42" and item.delivery_id == "d-1"


@pytest.mark.parametrize(("action", "kind"), [("synchronize", "review"), ("reopened", "review"), ("closed", None), ("edited", None)])
def test_github_pull_request_actions(action: str, kind: str | None) -> None:
    _, rule, _ = _item("github", "pull_request", payloads.github_pull_request(action=action), "acme/api")
    assert (rule.kind if rule else None) == kind


def test_github_issue_labeled_with_the_label_only() -> None:
    _, rule, item = _item("github", "issues", payloads.github_issue_labeled(), "acme/api")
    assert rule is not None and rule.kind == "ticket_to_pr"
    assert (item.subject, item.number, item.body, item.labels, item.head_sha) == ("issue", 7, "", ["bug", "sluicegate"], None)
    _, other, _ = _item("github", "issues", payloads.github_issue_labeled(label="bug"), "acme/api")
    assert other is None


def test_gitlab_merge_request_and_issue() -> None:
    described, rule, item = _item("gitlab", "Merge Request Hook", payloads.gitlab_merge_request(), "acme/platform/api")
    assert described.repository == "acme/platform/api" and rule is not None and rule.kind == "review"
    assert (item.number, item.head_sha, item.head_branch, item.base_branch) == (
        5,
        "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
        "ms-viewport",
        "main",
    )
    assert item.labels == ["API"] and item.author == "root"
    _, closed, _ = _item("gitlab", "Merge Request Hook", payloads.gitlab_merge_request(action="close"), "acme/platform/api")
    assert closed is None
    _, rule, item = _item("gitlab", "Issue Hook", payloads.gitlab_issue(before=("bug",)), "acme/platform/api")
    assert rule is not None and rule.kind == "ticket_to_pr" and item.subject == "issue" and item.number == 23
    # The label was there before this update: not newly added, no task.
    already = payloads.gitlab_issue(before=("sluicegate",))
    already["changes"]["labels"]["current"] = already["changes"]["labels"]["previous"]
    assert _item("gitlab", "Issue Hook", already, "acme/platform/api")[1] is None


def test_ado_pull_request_and_work_item() -> None:
    described, rule, item = _item("ado", None, payloads.ado_pull_request(), "fabrikam/Payments/api")
    assert described.repository == "fabrikam/Payments/api" and rule is not None and rule.kind == "review"
    assert (item.number, item.head_branch, item.base_branch, item.head_sha) == (
        1,
        "mytopic",
        "master",
        "53d54ac915144006c2c9e90d2c7d3880920db49c",
    )
    updated = _item("ado", None, payloads.ado_pull_request(event="git.pullrequest.updated"), "fabrikam/Payments/api")[1]
    assert updated is not None and updated.kind == "review"
    described, rule, item = _item("ado", None, payloads.ado_workitem_tagged(), "fabrikam/Payments/api")
    assert described.project_only and described.repository == "fabrikam/Payments" and rule is not None and rule.kind == "ticket_to_pr"
    assert (item.subject, item.number, item.title, item.labels) == ("issue", 5, "Some great new idea!", ["sluicegate", "triage"])
    untagged = payloads.ado_workitem_tagged(tag="other")
    assert _item("ado", None, untagged, "fabrikam/Payments/api")[1] is None


def test_ado_organisation_from_a_visualstudio_url() -> None:
    payload = payloads.ado_pull_request()
    del payload["resourceContainers"]
    payload["resource"]["repository"]["remoteUrl"] = "https://fabrikam.visualstudio.com/DefaultCollection/_git/api"
    assert describe("ado", {}, Doc(payload)).repository == "fabrikam/Payments/api"


@pytest.mark.parametrize(("provider", "event", "payload", "path"), [
    ("github", "pull_request", lambda p: p["pull_request"]["head"].pop("sha"), "pull_request.head.sha"),
    ("github", "pull_request", lambda p: p["repository"].pop("full_name"), "repository.full_name"),
    ("github", "pull_request", lambda p: p["pull_request"].update(number="42"), "pull_request.number"),
    ("github", "pull_request", lambda p: p.update(pull_request=[]), "pull_request"),
    ("gitlab", "Merge Request Hook", lambda p: p["object_attributes"].pop("iid"), "object_attributes.iid"),
    ("gitlab", "Merge Request Hook", lambda p: p["labels"].append({"id": 1}), "labels[1].title"),
    ("ado", None, lambda p: p["resource"]["repository"].pop("name"), "resource.repository.name"),
    ("ado", None, lambda p: p.pop("eventType"), "eventType"),
])  # fmt: skip
def test_a_missing_or_mistyped_field_is_named(provider: Any, event: str | None, payload: Any, path: str) -> None:
    makers: dict[str, Callable[[], dict[str, Any]]] = {
        "github": payloads.github_pull_request, "gitlab": payloads.gitlab_merge_request, "ado": payloads.ado_pull_request,
    }  # fmt: skip
    made = makers[provider]()
    payload(made)
    repository = {"github": "acme/api", "gitlab": "acme/platform/api", "ado": "fabrikam/Payments/api"}[provider]
    with pytest.raises(InvalidRequest) as caught:
        _item(provider, event, made, repository)
    assert caught.value.param == path and path in caught.value.message and caught.value.status == 400


def test_the_event_header_and_delivery_id_are_required() -> None:
    with pytest.raises(InvalidRequest) as caught:
        describe("github", {}, Doc(payloads.github_pull_request()))
    assert caught.value.param == "X-GitHub-Event"
    assert (
        delivery_id("github", {"x-github-delivery": b"72d3162e-cc78-11e3-81ab-4c9367dc0958"}, Doc({}))
        == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    )
    with pytest.raises(InvalidRequest, match="X-GitHub-Delivery"):
        delivery_id("github", {}, Doc({}))
    # GitLab: the Idempotency-Key (the same across retries) first, else the event UUID.
    assert delivery_id("gitlab", {"idempotency-key": b"k1", "x-gitlab-event-uuid": b"u1"}, Doc({})) == "k1"
    assert delivery_id("gitlab", {"x-gitlab-event-uuid": b"u1"}, Doc({})) == "u1"
    assert delivery_id("ado", {}, Doc(payloads.ado_pull_request())) == "2ab4e3d3-b7a6-425e-92b1-5a9982c1269e"
    with pytest.raises(InvalidRequest, match="printable"):
        delivery_id("github", {"x-github-delivery": b"a\nb"}, Doc({}))
