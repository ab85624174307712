"""The operations every provider's client offers, each idempotent and retried as a whole.

A provider implements the underscored methods, each a single try that reads
before it writes; the public methods here run them under the transport's retry
policy. ``repo`` is ``owner/name`` on GitHub, the project's full path (or its
numeric id) on GitLab, and ``project/repository`` on Azure DevOps, whose base
URL names the organization.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self

from sluicegate_adapters.models import BranchRef, CommentRef, CommitRef, DraftPullRequest, PullRequest, StatusRef, StatusState
from sluicegate_adapters.transport import Transport


class ScmClient(ABC):
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @property
    def provider(self) -> str:
        return self.transport.dialect.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transport.base_url!r})"

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def upsert_comment(self, repo: str, pr: int, marker: str, body: str) -> CommentRef:
        """The pull request's comment carrying ``marker`` (see ``models.marker_tag``) now reads ``body``."""
        return await self.transport.retrying("upsert_comment", self._upsert_comment, repo, pr, marker, body)

    async def set_status(
        self,
        repo: str,
        sha: str,
        context: str,
        state: StatusState,
        description: str = "",
        target_url: str | None = None,
        *,
        pr: int | None = None,
    ) -> StatusRef:
        """A commit status named ``context`` on ``sha`` (Azure DevOps: on pull request ``pr`` when given)."""
        return await self.transport.retrying("set_status", self._set_status, repo, sha, context, state, description, target_url, pr)

    async def create_branch(self, repo: str, name: str, from_ref: str | None = None) -> BranchRef:
        """Branch ``name`` at ``from_ref`` (a branch or a commit sha; the default branch when None)."""
        return await self.transport.retrying("create_branch", self._create_branch, repo, name, from_ref)

    async def commit_file(self, repo: str, branch: str, path: str, content: str | bytes, message: str) -> CommitRef:
        """``path`` on ``branch`` holds ``content``: one commit, or none when it already does."""
        return await self.transport.retrying("commit_file", self._commit_file, repo, branch, path, content, message)

    async def delete_branch(self, repo: str, name: str) -> bool:
        """False when there was no such branch."""
        return await self.transport.retrying("delete_branch", self._delete_branch, repo, name)

    async def upsert_draft_pull_request(
        self, repo: str, head: str, base: str, title: str, body: str, *, issue: int | None = None
    ) -> DraftPullRequest:
        """A draft pull request from ``head`` into ``base``; an open one for ``head`` is updated instead.

        ``issue`` links an issue (GitHub, GitLab: ``Closes #N`` in the body; Azure DevOps: a work item).
        """
        return await self.transport.retrying(
            "upsert_draft_pull_request", self._upsert_draft_pull_request, repo, head, base, title, body, issue
        )

    async def get_pull_request(self, repo: str, number: int) -> PullRequest:
        return await self.transport.retrying("get_pull_request", self._get_pull_request, repo, number)

    @abstractmethod
    async def _upsert_comment(self, repo: str, pr: int, marker: str, body: str) -> CommentRef: ...

    @abstractmethod
    async def _set_status(
        self, repo: str, sha: str, context: str, state: StatusState, description: str, target_url: str | None, pr: int | None
    ) -> StatusRef: ...

    @abstractmethod
    async def _create_branch(self, repo: str, name: str, from_ref: str | None) -> BranchRef: ...

    @abstractmethod
    async def _commit_file(self, repo: str, branch: str, path: str, content: str | bytes, message: str) -> CommitRef: ...

    @abstractmethod
    async def _delete_branch(self, repo: str, name: str) -> bool: ...

    @abstractmethod
    async def _upsert_draft_pull_request(
        self, repo: str, head: str, base: str, title: str, body: str, issue: int | None
    ) -> DraftPullRequest: ...

    @abstractmethod
    async def _get_pull_request(self, repo: str, number: int) -> PullRequest: ...
