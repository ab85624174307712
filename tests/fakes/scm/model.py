"""The state behind the fake SCM servers: repositories, branches, commits, pull requests, comments, statuses.

Small on purpose: a commit holds the whole tree (path --> bytes), a branch is a
name --> commit sha, and a file's id is git's blob sha, so a client comparing
blob ids sees what it would see on a real server.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field


def blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


_commit_numbers = itertools.count(1)


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, bytes]
    message: str


@dataclass
class Comment:
    id: int
    body: str
    # Azure DevOps groups comments in threads; GitHub and GitLab leave it 0
    thread: int = 0
    author: str = "sluicegate-bot"


@dataclass
class Pull:
    number: int
    head: str
    base: str
    title: str
    body: str
    draft: bool
    head_sha: str
    state: str = "open"
    comments: list[Comment] = field(default_factory=list)
    work_items: list[str] = field(default_factory=list)


@dataclass
class Status:
    id: int
    sha: str
    context: str
    state: str
    description: str
    target_url: str | None
    pull: int | None = None


@dataclass
class Repo:
    name: str
    id: int
    default_branch: str = "main"
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    pulls: dict[int, Pull] = field(default_factory=dict)
    statuses: list[Status] = field(default_factory=list)

    def head(self, branch: str) -> Commit | None:
        sha = self.branches.get(branch)
        return None if sha is None else self.commits[sha]

    def commit(self, branch: str, changes: dict[str, bytes], message: str) -> Commit:
        """A new commit on ``branch`` (created from nothing if it is new) with ``changes`` applied."""
        parent = self.head(branch)
        files = {**(parent.files if parent else {}), **changes}
        seed = f"{self.name}\0{branch}\0{message}\0{next(_commit_numbers)}".encode()
        made = Commit(
            sha=hashlib.sha1(seed, usedforsecurity=False).hexdigest(), parent=parent.sha if parent else None, files=files, message=message
        )
        self.commits[made.sha] = made
        self.branches[branch] = made.sha
        return made

    def open_pull(self, head: str, base: str | None = None) -> Pull | None:
        return next((p for p in self.pulls.values() if p.state == "open" and p.head == head and (base is None or p.base == base)), None)

    def open_pull_request(self, head: str, base: str | None = None, title: str = "A change", body: str = "") -> Pull:
        """A pull request as if someone had opened it by hand, its head branch created with one commit."""
        base = base or self.default_branch
        if head not in self.branches:
            self.branches[head] = self.branches[base]
            self.commit(head, {f"{head}.txt": b"change\n"}, "a change")
        number = max(self.pulls, default=0) + 1
        pull = Pull(number=number, head=head, base=base, title=title, body=body, draft=False, head_sha=self.branches[head])
        self.pulls[number] = pull
        return pull
