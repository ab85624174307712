"""A provider's name, its API's base URL and a token --> a client for it."""

from __future__ import annotations

from sluicegate_adapters.ado import AzureDevOpsClient, AzureDevOpsDialect
from sluicegate_adapters.client import ScmClient
from sluicegate_adapters.github import GitHubClient, GitHubDialect
from sluicegate_adapters.gitlab import GitLabClient, GitLabDialect
from sluicegate_adapters.retry import Clock, RetryPolicy
from sluicegate_adapters.transport import Dialect, Transport

# name --> (dialect, client class, the public API root a config may leave out)
PROVIDERS: dict[str, tuple[type[Dialect], type[ScmClient], str | None]] = {
    "github": (GitHubDialect, GitHubClient, "https://api.github.com"),
    "gitlab": (GitLabDialect, GitLabClient, "https://gitlab.com/api/v4"),
    # Azure DevOps has no default: the base URL names the organization
    "ado": (AzureDevOpsDialect, AzureDevOpsClient, None),
}


def make_client(
    provider: str,
    token: str,
    base_url: str | None = None,
    *,
    policy: RetryPolicy | None = None,
    clock: Clock | None = None,
    timeout_s: float = 30.0,
) -> ScmClient:
    try:
        dialect, client, default_url = PROVIDERS[provider]
    except KeyError:
        raise ValueError(f"unknown SCM provider {provider!r}; known: {', '.join(sorted(PROVIDERS))}") from None
    url = base_url or default_url
    if url is None:
        raise ValueError(f"{provider}: a base URL is required (https://dev.azure.com/ORGANIZATION)")
    return client(Transport(dialect(), url, token, policy=policy, clock=clock, timeout_s=timeout_s))
