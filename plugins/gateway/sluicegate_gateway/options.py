"""The gateway plugin's options: which repositories it hears from, whose tenant they are, which events make which tasks.

Decoded strictly (an unknown key is refused, naming it). Secrets are only ever
references (``{env: NAME}`` or ``{file: PATH}``), resolved when the plugin
starts (``bindings``): a reference that does not resolve refuses the start,
naming the key (``options.repositories[2].secret``), never the value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from sluicegate_orchestrator.queue import DEFAULT_PREFIX

from core.config import ConfigError, SecretRef

Provider = Literal["github", "gitlab", "ado"]
PROVIDERS: tuple[Provider, ...] = ("github", "gitlab", "ado")
DEFAULT_LABEL = "sluicegate"
KindName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
# How many "/"-separated parts a repository name has: owner/name; group[/subgroup...]/name; org/project/repo.
_PARTS = {"github": (2, 2), "gitlab": (2, 32), "ado": (3, 3)}


class EventRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An event that makes a task: the provider's event name, the actions it takes, and the task kind."""

    # GitHub: the X-GitHub-Event header; GitLab: X-Gitlab-Event; Azure DevOps: the payload's eventType.
    event: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    kind: KindName
    # GitHub: the payload's action; GitLab: object_attributes.action. Empty: any action.
    actions: tuple[str, ...] = ()
    # Only when this label (GitHub, GitLab) or tag (Azure DevOps) was just added to the issue or work item.
    label: str | None = None


def default_rules(provider: Provider, label: str) -> tuple[EventRule, ...]:
    """Pull requests make ``review`` tasks; an issue (work item) given ``label`` makes a ``ticket_to_pr`` task."""
    if provider == "github":
        return (
            EventRule(event="pull_request", kind="review", actions=("opened", "synchronize", "reopened")),
            EventRule(event="issues", kind="ticket_to_pr", actions=("labeled",), label=label),
        )
    if provider == "gitlab":
        return (
            EventRule(event="Merge Request Hook", kind="review", actions=("open", "update")),
            EventRule(event="Issue Hook", kind="ticket_to_pr", label=label),
        )
    return (
        EventRule(event="git.pullrequest.created", kind="review"),
        EventRule(event="git.pullrequest.updated", kind="review"),
        EventRule(event="workitem.updated", kind="ticket_to_pr", label=label),
    )


class Repository(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One repository the gateway hears from, the tenant its tasks belong to, and the secret its deliveries carry."""

    provider: Provider
    # GitHub "owner/name"; GitLab path_with_namespace "group/sub/name"; Azure DevOps "org/project/repo".
    repository: Annotated[str, msgspec.Meta(min_length=3, max_length=512)]
    tenant: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    # GitHub: the webhook secret (HMAC key); GitLab: the secret token; Azure DevOps: the basic-auth password or shared secret.
    secret: SecretRef
    # Azure DevOps basic authentication: the user name the service hook sends with the secret.
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] = "sluicegate"
    # The label (tag) that turns an issue (work item) into a ticket_to_pr task in the default rules.
    label: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] = DEFAULT_LABEL
    # None: the provider's default rules (``default_rules``).
    events: tuple[EventRule, ...] | None = None

    def __post_init__(self) -> None:
        parts = self.repository.split("/")
        low, high = _PARTS[self.provider]
        if not low <= len(parts) <= high or not all(parts):
            shape = {"github": "owner/name", "gitlab": "group/name", "ado": "organization/project/repository"}[self.provider]
            raise ValueError(f"a {self.provider} repository is named {shape}")
        if ":" in self.username:
            raise ValueError("an Azure DevOps user name cannot contain ':'")

    def rules(self) -> tuple[EventRule, ...]:
        return self.events if self.events is not None else default_rules(self.provider, self.label)


class Options(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    repositories: tuple[Repository, ...] = ()
    # The orchestrator's task store: a postgresql:// DSN (plain or by reference) or a SQLite path;
    # None: the orchestrator plugin's default, ``orchestrator/tasks.sqlite`` beside this plugin's data directory.
    store: SecretRef | str | None = None
    # The orchestrator's Redis key prefix (its streams); delivery ids are kept under "{prefix}:deliveries:".
    redis_prefix: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = DEFAULT_PREFIX
    # The orchestrator queue tasks go to.
    queue: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")] = "default"
    # The kinds POST /api/v1/tasks accepts.
    task_kinds: tuple[KindName, ...] = ("review", "ticket_to_pr")
    # How long a delivery id is remembered (a redelivery within it is acknowledged, not queued).
    dedup_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] = 86400.0
    # GitLab and Azure DevOps: a delivery whose X-Sluicegate-Timestamp is further than this from now is refused.
    replay_window_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    # The largest request body (a webhook delivery or a task) read; beyond it: 413.
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 2 * 1024 * 1024

    def __post_init__(self) -> None:
        seen: dict[tuple[str, str], int] = {}
        for i, repo in enumerate(self.repositories):
            key = (repo.provider, repo.repository.casefold())
            if key in seen:
                raise ValueError(f"repositories[{i}] repeats repositories[{seen[key]}] ({repo.provider} {repo.repository})")
            seen[key] = i


@dataclass(frozen=True, slots=True)
class Binding:
    """A repository entry with its secret resolved (bytes, never logged)."""

    index: int
    repo: Repository
    secret: bytes


def bindings(options: Options) -> dict[str, list[Binding]]:
    """Each provider's entries, secrets resolved; a reference that does not resolve is a ``ConfigError`` naming the key."""
    found: dict[str, list[Binding]] = {p: [] for p in PROVIDERS}
    for i, repo in enumerate(options.repositories):
        key = f"options.repositories[{i}].secret"
        try:
            value = repo.secret.resolve()
        except ConfigError as exc:
            raise ConfigError(f"plugin gateway: key `{key}`: {exc}") from None
        if not value:
            raise ConfigError(f"plugin gateway: key `{key}`: the secret ({repo.secret.describe()}) is empty")
        found[repo.provider].append(Binding(i, repo, value.encode("utf-8")))
    return found


def default_store_dir(data_dir: str) -> Path:
    """Where the orchestrator plugin keeps its embedded store by default: the two plugins share it."""
    return Path(data_dir).parent / "orchestrator"


def store_url(options: Options, data_dir: str) -> str:
    """Where the task store is (a ``ConfigError`` naming the key when its reference does not resolve)."""
    if options.store is None:
        return str(default_store_dir(data_dir) / "tasks.sqlite")
    if isinstance(options.store, str):
        return options.store
    try:
        return options.store.resolve()
    except ConfigError as exc:
        raise ConfigError(f"plugin gateway: key `options.store`: {exc}") from None
