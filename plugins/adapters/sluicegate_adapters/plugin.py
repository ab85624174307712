"""The adapters as a gateway plugin: SCM connections, and the two reference workflows as task handlers.

Enabled in the config as ``adapters``; the orchestrator plugin runs the task
kinds it offers:

- ``review``: a pull request (merge request) → one model call through the
  gateway's pipeline as the task's tenant → one comment on it, updated (never
  duplicated) when the pull request changes, and a ``sluicegate/review``
  status on its head commit;
- ``ticket_to_pr``: a labelled issue → a plan (a model call) → a branch →
  child tasks ``ticket_change`` that each ask the model for one file and commit
  it to the branch → a draft pull request that links the issue. A child that
  gives up stays local: the parent deletes the branch (its compensation),
  records which children failed, and finishes.

Every effect is a memoised step (``StepContext.step``) whose write is
idempotent, so a task run again after a crash redoes nothing that finished.
An SCM error a retry cannot fix (401, 404, 409, 422) is ``Permanent``; a rate
limit or an outage is retried by the orchestrator with backoff.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec
from sluicegate_orchestrator import Json, Permanent, StepContext

from core.config import SecretRef
from core.plugin import Plugin, Services
from sluicegate_adapters.client import ScmClient
from sluicegate_adapters.errors import ScmError
from sluicegate_adapters.factory import make_client
from sluicegate_adapters.retry import RetryPolicy

Provider = Literal["github", "gitlab", "ado"]


class Connection(msgspec.Struct, forbid_unknown_fields=True):
    provider: Provider
    token: SecretRef
    # The API root (GitHub Enterprise, self-managed GitLab; Azure DevOps: https://dev.azure.com/ORG).
    base_url: str | None = None


class ReviewOptions(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    max_tokens: int = 400
    status_context: str = "sluicegate/review"


class TicketOptions(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    max_tokens: int = 300
    base_branch: str = "main"
    branch_prefix: str = "sluicegate/issue-"
    # Each child task writes one file here: <path_prefix>/issue-<n>-<i>.md
    path_prefix: str = "docs/sluicegate"
    changes: int = 2


class RetryOptions(msgspec.Struct, forbid_unknown_fields=True):
    """Retries inside one SCM call (429, 5xx, connection errors) before the task's own retry takes over."""

    max_attempts: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    # A longer wait the provider asks for is not slept: the call fails as rate limited, and the task retries later.
    max_wait_s: float = 60.0


class AdaptersOptions(msgspec.Struct, forbid_unknown_fields=True):
    connections: list[Connection]
    retry: RetryOptions = msgspec.field(default_factory=RetryOptions)
    review: ReviewOptions | None = None
    ticket: TicketOptions | None = None


class WorkItem(msgspec.Struct, kw_only=True):
    """A task's input as the gateway plugin writes it (fields this module does not read are skipped)."""

    provider: Provider
    repository: str
    number: int
    title: str
    body: str = ""
    head_sha: str | None = None
    base_branch: str | None = None


class Change(msgspec.Struct, kw_only=True):
    """A ``ticket_change`` child's input."""

    provider: Provider
    repository: str
    number: int
    title: str
    plan: str
    branch: str
    path: str


def _permanent(exc: ScmError) -> Exception:
    """An SCM error for the orchestrator: retried if a retry can help, else the task's permanent failure."""
    return exc if exc.retryable else Permanent(f"{type(exc).__name__}: {exc.message}")


class AdaptersPlugin(Plugin):
    name: ClassVar[str] = "adapters"
    Options = AdaptersOptions

    def __init__(self, options: AdaptersOptions, services: Services) -> None:
        super().__init__(options, services)
        self._clients: dict[str, ScmClient] = {}

    async def start(self) -> None:
        for i, connection in enumerate(self.options.connections):
            try:
                token = connection.token.resolve()
            except Exception as exc:  # a ConfigError naming the reference, never a value
                raise RuntimeError(f"plugin adapters: key `options.connections[{i}].token`: {exc}") from None
            r = self.options.retry
            policy = RetryPolicy(
                max_attempts=r.max_attempts, base_delay_s=r.base_delay_s, max_delay_s=r.max_delay_s, max_wait_s=r.max_wait_s
            )
            self._clients[connection.provider] = make_client(connection.provider, token, connection.base_url, policy=policy)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    def task_handlers(self) -> dict[str, Any]:
        handlers: dict[str, Any] = {}
        if self.options.review is not None:
            handlers["review"] = self.review
        if self.options.ticket is not None:
            handlers["ticket_to_pr"] = self.ticket_to_pr
            handlers["ticket_change"] = self.ticket_change
        return handlers

    # --- the pieces ---------------------------------------------------------------------

    def _client(self, provider: str) -> ScmClient:
        client = self._clients.get(provider)
        if client is None:
            raise Permanent(f"no connection is configured for {provider}")
        return client

    async def _ask(self, ctx: StepContext, model: str, max_tokens: int, system: str, prompt: str) -> str:
        """One model call through the gateway's pipeline as the task's tenant; the answer's text."""
        principal = await self.services.principal(ctx.tenant)
        body = {
            "model": model, "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        }  # fmt: skip
        done = await self.services.complete(principal, body, trace_id=ctx.trace_id)
        if done.status != 200:
            if done.status == 429 or done.status >= 500:
                raise RuntimeError(f"model call answered {done.status}")  # retried with backoff
            raise Permanent(f"model call answered {done.status}")
        answer: dict[str, Any] = msgspec.json.decode(done.body)
        choices = answer.get("choices") or [{}]
        content = (choices[0].get("message") or {}).get("content")
        return content.strip() if isinstance(content, str) and content.strip() else "(the model gave no text)"

    async def _scm(self, call: Any) -> Json:
        try:
            result = await call
        except ScmError as exc:
            raise _permanent(exc) from None
        out: Json = msgspec.to_builtins(result)
        return out

    # --- review --------------------------------------------------------------------------

    async def review(self, ctx: StepContext) -> Json:
        options: ReviewOptions = self.options.review
        item = ctx.input_as(WorkItem)
        client = self._client(item.provider)

        async def ask(_key: str) -> Json:
            prompt = f"Review this pull request briefly.\nTitle: {item.title}\n\n{item.body}"[:8000]
            return await self._ask(ctx, options.model, options.max_tokens, "You are a careful code reviewer.", prompt)

        text = str(await ctx.step("review", ask))
        at = f" at `{item.head_sha[:12]}`" if item.head_sha else ""
        body = f"**Automated review** of #{item.number}{at}: {item.title}\n\n{text}"

        async def comment(_key: str) -> Json:
            return await self._scm(client.upsert_comment(item.repository, item.number, f"review:{item.number}", body))

        posted = await ctx.step("comment", comment)
        if item.head_sha:
            sha = item.head_sha

            async def status(_key: str) -> Json:
                call = client.set_status(item.repository, sha, options.status_context, "success", "Reviewed", pr=item.number)
                return await self._scm(call)

            await ctx.step("status", status)
        return {"comment": posted}

    # --- ticket to draft pull request ---------------------------------------------------------

    async def ticket_to_pr(self, ctx: StepContext) -> Json:
        options: TicketOptions = self.options.ticket
        item = ctx.input_as(WorkItem)
        client = self._client(item.provider)
        branch = f"{options.branch_prefix}{item.number}"

        async def plan(_key: str) -> Json:
            prompt = f"Plan a small change for this issue in two sentences.\nTitle: {item.title}\n\n{item.body}"[:8000]
            return await self._ask(ctx, options.model, options.max_tokens, "You plan small, safe code changes.", prompt)

        planned = str(await ctx.step("plan", plan))

        async def create(_key: str) -> Json:
            return await self._scm(client.create_branch(item.repository, branch, options.base_branch))

        async def delete(_result: Json) -> None:
            await client.delete_branch(item.repository, branch)

        await ctx.step("branch", create, compensate=delete)
        children = []
        for i in range(options.changes):
            change = Change(
                provider=item.provider, repository=item.repository, number=item.number, title=item.title, plan=planned,
                branch=branch, path=f"{options.path_prefix}/issue-{item.number}-{i + 1}.md",
            )  # fmt: skip
            children.append(await ctx.spawn(f"change-{i + 1}", "ticket_change", msgspec.to_builtins(change)))
        outcomes = await ctx.wait(children)
        failed = [o.id for o in outcomes if not o.ok]
        if failed:
            # A child gave up: undo the branch, record it, and finish (the parent itself is healthy).
            left = await ctx.compensate()
            return {"outcome": "compensated", "failed_children": failed, "compensations_failed": left, "branch": branch}
        title = f"Draft: {item.title}"
        text = f"{planned}\n\nOpened by Sluicegate for issue #{item.number}."

        async def pull(_key: str) -> Json:
            call = client.upsert_draft_pull_request(item.repository, branch, options.base_branch, title, text, issue=item.number)
            return await self._scm(call)

        opened = await ctx.step("pull_request", pull)
        return {"outcome": "opened", "pull_request": opened, "branch": branch}

    async def ticket_change(self, ctx: StepContext) -> Json:
        options: TicketOptions = self.options.ticket
        change = ctx.input_as(Change)
        client = self._client(change.provider)

        async def write(_key: str) -> Json:
            prompt = f"Write a short markdown note for this plan.\nIssue: {change.title}\nPlan: {change.plan}"[:8000]
            return await self._ask(ctx, options.model, options.max_tokens, "You write concise documentation.", prompt)

        content = str(await ctx.step("content", write))

        async def commit(_key: str) -> Json:
            message = f"{change.title} (#{change.number})"
            return await self._scm(client.commit_file(change.repository, change.branch, change.path, content + "\n", message))

        return await ctx.step("commit", commit)
