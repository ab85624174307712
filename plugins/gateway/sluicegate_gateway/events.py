"""Provider events --> one normalised work item, the input of the task an event makes.

Two steps, so that a delivery nobody asked for costs little: ``describe``
reads what rule matching needs (event name, action, repository, labels just
added) and ``normalise`` reads the rest once a rule has matched. A missing or
mistyped field is a 400 naming it (``payload.MalformedEvent``).

Azure DevOps work items belong to a project, not a repository: their
``repository`` is ``org/project`` and the plugin gives the task the first
configured repository of that project whose rules take the event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec

from sluicegate_gateway.options import EventRule, Provider
from sluicegate_gateway.payload import Doc, MalformedEvent

Subject = Literal["pull_request", "issue"]


class WorkItem(msgspec.Struct, kw_only=True):
    """What a task needs to know of the pull request (merge request) or issue (work item) behind an event."""

    provider: Provider
    event: str
    action: str | None
    subject: Subject
    repository: str
    number: int  # GitHub number; GitLab iid; Azure DevOps pull request or work item id
    title: str
    body: str
    labels: list[str]
    delivery_id: str
    url: str | None = None
    author: str | None = None
    head_sha: str | None = None
    head_branch: str | None = None
    base_branch: str | None = None


@dataclass(frozen=True, slots=True)
class Described:
    """What rule matching needs of an event."""

    event: str
    action: str | None
    repository: str  # Azure DevOps work items: "org/project"
    added_labels: frozenset[str]
    project_only: bool = False

    def rule(self, rules: tuple[EventRule, ...]) -> EventRule | None:
        for rule in rules:
            if rule.event != self.event or (rule.actions and self.action not in rule.actions):
                continue
            if rule.label is None or rule.label in self.added_labels:
                return rule
        return None


def describe(provider: Provider, headers: Mapping[str, bytes], doc: Doc) -> Described:
    if provider == "github":
        return _github_described(_header(headers, "x-github-event", "X-GitHub-Event"), doc)
    if provider == "gitlab":
        return _gitlab_described(_header(headers, "x-gitlab-event", "X-Gitlab-Event"), doc)
    return _ado_described(doc)


def normalise(provider: Provider, described: Described, doc: Doc, repository: str, delivery_id: str) -> WorkItem:
    """The work item of an event a rule took; ``repository`` as configured (its spelling, not the payload's)."""
    common: dict[str, Any] = {
        "provider": provider, "event": described.event, "action": described.action, "repository": repository, "delivery_id": delivery_id,
    }  # fmt: skip
    if provider == "github":
        return _github_item(described, doc, common)
    if provider == "gitlab":
        return _gitlab_item(described, doc, common)
    return _ado_item(described, doc, common)


def _header(headers: Mapping[str, bytes], name: str, display: str) -> str:
    value = headers.get(name)
    if not value:
        raise MalformedEvent(f"The delivery has no `{display}` header.", param=display)
    return value.decode("latin-1")


def _branch(ref: str | None) -> str | None:
    return ref.removeprefix("refs/heads/") if ref is not None else None


# --- GitHub -------------------------------------------------------------------


def _github_described(event: str, doc: Doc) -> Described:
    action = doc.opt_text("action")
    added = {doc.text("label", "name")} if action in ("labeled",) else set()
    return Described(event, action, doc.text("repository", "full_name"), frozenset(added))


def _github_item(described: Described, doc: Doc, common: dict[str, Any]) -> WorkItem:
    if described.event == "pull_request":
        pr = ("pull_request",)
        return WorkItem(
            **common, subject="pull_request", number=doc.number(*pr, "number"), title=doc.text(*pr, "title"),
            body=doc.opt_text(*pr, "body") or "", labels=doc.names((*pr, "labels"), "name"), url=doc.opt_text(*pr, "html_url"),
            author=doc.opt_text(*pr, "user", "login"), head_sha=doc.text(*pr, "head", "sha"), head_branch=doc.text(*pr, "head", "ref"),
            base_branch=doc.text(*pr, "base", "ref"),
        )  # fmt: skip
    issue = ("issue",)
    return WorkItem(
        **common, subject="issue", number=doc.number(*issue, "number"), title=doc.text(*issue, "title"),
        body=doc.opt_text(*issue, "body") or "", labels=doc.names((*issue, "labels"), "name"), url=doc.opt_text(*issue, "html_url"),
        author=doc.opt_text(*issue, "user", "login"),
    )  # fmt: skip


# --- GitLab -------------------------------------------------------------------


def _gitlab_described(event: str, doc: Doc) -> Described:
    action = doc.opt_text("object_attributes", "action")
    labels = set(doc.names(("labels",), "title"))
    if action == "open":
        added = labels
    elif doc.has_object("changes", "labels"):
        before = set(doc.names(("changes", "labels", "previous"), "title"))
        added = set(doc.names(("changes", "labels", "current"), "title")) - before
    else:
        added = set()
    return Described(event, action, doc.text("project", "path_with_namespace"), frozenset(added))


def _gitlab_item(described: Described, doc: Doc, common: dict[str, Any]) -> WorkItem:
    attrs = ("object_attributes",)
    shared: dict[str, Any] = {
        "number": doc.number(*attrs, "iid"), "title": doc.text(*attrs, "title"), "body": doc.opt_text(*attrs, "description") or "",
        "labels": doc.names(("labels",), "title"), "url": doc.opt_text(*attrs, "url"), "author": doc.opt_text("user", "username"),
    }  # fmt: skip
    if doc.text("object_kind") == "merge_request":
        return WorkItem(
            **common, **shared, subject="pull_request", head_sha=doc.text(*attrs, "last_commit", "id"),
            head_branch=doc.text(*attrs, "source_branch"), base_branch=doc.text(*attrs, "target_branch"),
        )  # fmt: skip
    return WorkItem(**common, **shared, subject="issue")


# --- Azure DevOps --------------------------------------------------------------

_FIELDS = ("resource", "revision", "fields")


def _ado_tags(value: str | None) -> set[str]:
    return {tag.strip() for tag in (value or "").split(";") if tag.strip()}


def _ado_org(doc: Doc) -> str:
    """The organisation, from the account's URL (or the resource's): dev.azure.com/ORG/... or ORG.visualstudio.com."""
    for path in (("resourceContainers", "account", "baseUrl"), ("resource", "repository", "remoteUrl"), ("resource", "url")):
        url = doc.opt_text(*path)
        if url is None:
            continue
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        segments = [s for s in parts.path.split("/") if s]
        if host == "dev.azure.com" and segments:
            return segments[0]
        if host.endswith(".visualstudio.com"):
            return host.split(".", 1)[0]
    raise MalformedEvent("The event has no `resourceContainers.account.baseUrl`.", param="resourceContainers.account.baseUrl")


def _ado_described(doc: Doc) -> Described:
    event = doc.text("eventType")
    org = _ado_org(doc)
    if event.startswith("workitem."):
        project = doc.text(*_FIELDS, "System.TeamProject")
        change = ("resource", "fields", "System.Tags")
        added = _ado_tags(doc.opt_text(*change, "newValue")) - _ado_tags(doc.opt_text(*change, "oldValue"))
        return Described(event, None, f"{org}/{project}", frozenset(added), project_only=True)
    repo = ("resource", "repository")
    return Described(event, None, f"{org}/{doc.text(*repo, 'project', 'name')}/{doc.text(*repo, 'name')}", frozenset())


def _ado_item(described: Described, doc: Doc, common: dict[str, Any]) -> WorkItem:
    res = ("resource",)
    if described.project_only:
        return WorkItem(
            **common, subject="issue", number=doc.number(*res, "workItemId"), title=doc.text(*_FIELDS, "System.Title"),
            body=doc.opt_text(*_FIELDS, "System.Description") or "", labels=sorted(_ado_tags(doc.opt_text(*_FIELDS, "System.Tags"))),
            url=doc.opt_text(*res, "_links", "html", "href"), author=doc.opt_text(*_FIELDS, "System.ChangedBy"),
        )  # fmt: skip
    return WorkItem(
        **common, subject="pull_request", number=doc.number(*res, "pullRequestId"), title=doc.text(*res, "title"),
        body=doc.opt_text(*res, "description") or "", labels=doc.names((*res, "labels"), "name"),
        url=doc.opt_text(*res, "_links", "web", "href"), author=doc.opt_text(*res, "createdBy", "uniqueName"),
        head_sha=doc.opt_text(*res, "lastMergeSourceCommit", "commitId"), head_branch=_branch(doc.text(*res, "sourceRefName")),
        base_branch=_branch(doc.text(*res, "targetRefName")),
    )  # fmt: skip


def delivery_id(provider: Provider, headers: Mapping[str, bytes], doc: Doc) -> str:
    """The provider's id of this delivery, the same on a redelivery (GitLab: Idempotency-Key, else X-Gitlab-Event-UUID)."""
    if provider == "github":
        value, name = headers.get("x-github-delivery"), "X-GitHub-Delivery"
    elif provider == "gitlab":
        value = headers.get("idempotency-key") or headers.get("x-gitlab-event-uuid")
        name = "X-Gitlab-Event-UUID"
    else:
        found = doc.opt_text("id")
        value, name = (found.encode("utf-8") if found is not None else None), "id"
    if not value:
        raise MalformedEvent(f"The delivery has no `{name}`.", param=name)
    text = value.decode("latin-1")
    if len(text) > 200 or not text.isascii() or not text.isprintable():
        raise MalformedEvent(f"The delivery's `{name}` must be at most 200 printable ASCII characters.", param=name)
    return text
