"""What the clients return, the same for every provider, and the helpers behind idempotent writes."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import msgspec

# what a write did: an upsert run twice ends "created" then "updated" or "unchanged"
Action = Literal["created", "updated", "unchanged"]
# the common commit-status vocabulary, mapped to each provider's own
StatusState = Literal["pending", "success", "failure", "error"]
PullState = Literal["open", "closed", "merged"]

_MARKER_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._/-]{0,199}")
_SHA = re.compile(r"[0-9a-f]{40}")


class CommentRef(msgspec.Struct, frozen=True):
    # GitHub and GitLab: the comment's id; Azure DevOps: "<thread id>/<comment id>"
    id: str
    url: str
    action: Action


class StatusRef(msgspec.Struct, frozen=True):
    id: str
    sha: str
    context: str
    state: StatusState


class BranchRef(msgspec.Struct, frozen=True):
    name: str
    sha: str
    action: Action


class CommitRef(msgspec.Struct, frozen=True):
    """The commit the branch points at after the write (its head, when the file already held the content)."""

    branch: str
    path: str
    sha: str
    action: Action


class PullRequest(msgspec.Struct, frozen=True):
    # GitHub: the PR number; GitLab: the merge request iid; Azure DevOps: pullRequestId
    number: int
    url: str
    state: PullState
    draft: bool
    title: str
    body: str
    head: str
    base: str
    head_sha: str | None = None


class DraftPullRequest(msgspec.Struct, frozen=True):
    pull_request: PullRequest
    action: Action


def marker_tag(key: str) -> str:
    """The hidden HTML comment that identifies a comment written for ``key`` (e.g. ``review:pr-12``)."""
    if not _MARKER_KEY.fullmatch(key):
        raise ValueError("a marker key is 1-200 characters of letters, digits and :._/- (starting with a letter or digit)")
    return f"<!-- sluicegate:{key} -->"


def marked_body(key: str, body: str) -> str:
    tag = marker_tag(key)
    return body if tag in body else f"{tag}\n{body}"


def blob_sha(content: bytes) -> str:
    """Git's object id for a file holding ``content``: equal ids mean the file already holds it."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


def as_bytes(content: str | bytes) -> bytes:
    return content.encode() if isinstance(content, str) else content


def is_sha(ref: str) -> bool:
    return _SHA.fullmatch(ref) is not None


def with_issue_link(body: str, issue: int | None) -> str:
    """GitHub and GitLab close an issue named by ``Closes #N`` when the pull request merges."""
    if issue is None:
        return body
    line = f"Closes #{issue}"
    return body if line in body else f"{body}\n\n{line}" if body else line
