"""Sluicegate's SCM adapters: GitHub, GitLab and Azure DevOps REST clients for workflows.

Every operation is idempotent (a second run updates what the first wrote) and
retried as a whole on rate limits and provider failures; see ``client.ScmClient``.
"""

from __future__ import annotations

from sluicegate_adapters.ado import AzureDevOpsClient
from sluicegate_adapters.client import ScmClient
from sluicegate_adapters.errors import (
    BadRequest,
    Conflict,
    NotFound,
    RateLimited,
    ScmError,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from sluicegate_adapters.factory import PROVIDERS, make_client
from sluicegate_adapters.github import GitHubClient
from sluicegate_adapters.gitlab import GitLabClient
from sluicegate_adapters.models import (
    Action,
    BranchRef,
    CommentRef,
    CommitRef,
    DraftPullRequest,
    PullRequest,
    StatusRef,
    StatusState,
    marker_tag,
)
from sluicegate_adapters.retry import Clock, RetryPolicy

__all__ = [
    "PROVIDERS",
    "Action",
    "AzureDevOpsClient",
    "BadRequest",
    "BranchRef",
    "Clock",
    "CommentRef",
    "CommitRef",
    "Conflict",
    "DraftPullRequest",
    "GitHubClient",
    "GitLabClient",
    "NotFound",
    "PullRequest",
    "RateLimited",
    "RetryPolicy",
    "ScmClient",
    "ScmError",
    "StatusRef",
    "StatusState",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "make_client",
    "marker_tag",
]
