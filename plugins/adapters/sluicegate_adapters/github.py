"""GitHub REST v3 (api version 2022-11-28): issue comments, commit statuses, git refs, contents, pulls.

Base URL: ``https://api.github.com`` (GitHub Enterprise: ``https://HOST/api/v3``).
Rate limits: a 403 or 429 with ``retry-after`` waits that long; one with
``x-ratelimit-remaining: 0`` waits until ``x-ratelimit-reset``; a secondary
limit that names no wait waits a minute, as GitHub's documentation asks.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import quote

import msgspec

from sluicegate_adapters.client import ScmClient
from sluicegate_adapters.errors import Conflict, NotFound, Unprocessable
from sluicegate_adapters.models import (
    BranchRef,
    CommentRef,
    CommitRef,
    DraftPullRequest,
    PullRequest,
    PullState,
    StatusRef,
    StatusState,
    as_bytes,
    blob_sha,
    is_sha,
    marked_body,
    marker_tag,
    with_issue_link,
)
from sluicegate_adapters.retry import parse_retry_after, seconds_until_epoch
from sluicegate_adapters.transport import Dialect, Throttle

API_VERSION = "2022-11-28"
SECONDARY_LIMIT_WAIT_S = 60.0
_DESCRIPTION_LIMIT = 140


class _Comment(msgspec.Struct):
    id: int
    body: str | None = None
    html_url: str = ""


class _Status(msgspec.Struct):
    id: int
    state: str
    context: str


class _Object(msgspec.Struct):
    sha: str


class _Ref(msgspec.Struct):
    ref: str
    object: _Object


class _Repo(msgspec.Struct):
    default_branch: str


class _Content(msgspec.Struct):
    sha: str
    type: str = "file"


class _ContentWrite(msgspec.Struct):
    commit: _Object


class _Side(msgspec.Struct):
    ref: str
    sha: str | None = None


class _Pull(msgspec.Struct):
    number: int
    state: str
    title: str
    head: _Side
    base: _Side
    html_url: str = ""
    body: str | None = None
    draft: bool = False
    merged_at: str | None = None


class _ErrorItem(msgspec.Struct):
    message: str | None = None
    code: str | None = None
    field: str | None = None


class _ErrorBody(msgspec.Struct):
    message: str = ""
    errors: list[_ErrorItem | str] = []


class GitHubDialect(Dialect):
    name = "github"

    def auth_headers(self, token: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
        }

    def throttle(self, status: int, headers: Mapping[str, str], message: str, now: float) -> Throttle | None:
        if status not in (403, 429):
            return None
        asked = parse_retry_after(headers.get("retry-after"), now)
        if asked is not None:
            return Throttle(asked)
        if headers.get("x-ratelimit-remaining") == "0":
            return Throttle(seconds_until_epoch(headers.get("x-ratelimit-reset"), now) or None)
        if "secondary rate limit" in message.lower():
            return Throttle(SECONDARY_LIMIT_WAIT_S)
        return Throttle(None) if status == 429 else None

    def error_message(self, body: bytes) -> str:
        try:
            error = msgspec.json.decode(body, type=_ErrorBody)
        except msgspec.DecodeError:
            return ""
        details = [e if isinstance(e, str) else e.message or " ".join(filter(None, (e.field, e.code))) for e in error.errors]
        return "; ".join(filter(None, [error.message, *details]))


def _repo(repo: str) -> str:
    owner, _, name = repo.partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"github: a repository is 'owner/name', not {repo!r}")
    return f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"


def _pull(pull: _Pull) -> PullRequest:
    state: PullState = "merged" if pull.merged_at else "closed" if pull.state == "closed" else "open"
    return PullRequest(
        number=pull.number, url=pull.html_url, state=state, draft=pull.draft, title=pull.title,
        body=pull.body or "", head=pull.head.ref, base=pull.base.ref, head_sha=pull.head.sha,
    )  # fmt: skip


class GitHubClient(ScmClient):
    async def _upsert_comment(self, repo: str, pr: int, marker: str, body: str) -> CommentRef:
        tag, text = marker_tag(marker), marked_body(marker, body)
        comments = await self.transport.pages(f"{_repo(repo)}/issues/{pr}/comments", list[_Comment], params={"per_page": "100"})
        found = next((c for c in comments if tag in (c.body or "")), None)
        if found is None:
            made = await self.transport.call("POST", f"{_repo(repo)}/issues/{pr}/comments", _Comment, body={"body": text})
            return CommentRef(id=str(made.id), url=made.html_url, action="created")
        if found.body == text:
            return CommentRef(id=str(found.id), url=found.html_url, action="unchanged")
        edited = await self.transport.call("PATCH", f"{_repo(repo)}/issues/comments/{found.id}", _Comment, body={"body": text})
        return CommentRef(id=str(edited.id), url=edited.html_url, action="updated")

    async def _set_status(
        self, repo: str, sha: str, context: str, state: StatusState, description: str, target_url: str | None, pr: int | None
    ) -> StatusRef:
        status = {"state": state, "context": context, "description": description[:_DESCRIPTION_LIMIT], "target_url": target_url}
        made = await self.transport.call("POST", f"{_repo(repo)}/statuses/{sha}", _Status, body=status)
        return StatusRef(id=str(made.id), sha=sha, context=made.context, state=state)

    async def _branch_sha(self, repo: str, name: str) -> str | None:
        try:
            ref = await self.transport.call("GET", f"{_repo(repo)}/git/ref/heads/{quote(name)}", _Ref)
        except NotFound:
            return None
        return ref.object.sha

    async def _resolve(self, repo: str, ref: str | None) -> str:
        if ref is not None and is_sha(ref):
            return ref
        if ref is None:
            ref = (await self.transport.call("GET", _repo(repo), _Repo)).default_branch
        sha = await self._branch_sha(repo, ref)
        if sha is None:
            raise NotFound(f"github: {repo} has no branch {ref!r}", provider="github", scm_status=404)
        return sha

    async def _create_branch(self, repo: str, name: str, from_ref: str | None) -> BranchRef:
        sha = await self._resolve(repo, from_ref)
        existing = await self._branch_sha(repo, name)
        if existing is None:
            try:
                await self.transport.call("POST", f"{_repo(repo)}/git/refs", _Ref, body={"ref": f"refs/heads/{name}", "sha": sha})
                return BranchRef(name=name, sha=sha, action="created")
            except Unprocessable as exc:
                if "already exists" not in exc.message:
                    raise
            existing = await self._branch_sha(repo, name)
        if existing != sha:
            where = from_ref or "the default branch"
            raise Conflict(f"github: branch {name!r} of {repo} exists at another commit than {where}", provider="github")
        return BranchRef(name=name, sha=sha, action="unchanged")

    async def _commit_file(self, repo: str, branch: str, path: str, content: str | bytes, message: str) -> CommitRef:
        data = as_bytes(content)
        path = path.lstrip("/")
        where = f"{_repo(repo)}/contents/{quote(path)}"
        try:
            current: _Content | None = await self.transport.call("GET", where, _Content, params={"ref": branch})
        except NotFound:
            current = None
        if current is not None and current.sha == blob_sha(data):
            head = await self._resolve(repo, branch)
            return CommitRef(branch=branch, path=path, sha=head, action="unchanged")
        write = {"message": message, "content": base64.b64encode(data).decode(), "branch": branch}
        if current is not None:
            write["sha"] = current.sha
        made = await self.transport.call("PUT", where, _ContentWrite, body=write)
        return CommitRef(branch=branch, path=path, sha=made.commit.sha, action="updated" if current else "created")

    async def _delete_branch(self, repo: str, name: str) -> bool:
        try:
            await self.transport.send("DELETE", f"{_repo(repo)}/git/refs/heads/{quote(name)}")
        except NotFound:
            return False
        except Unprocessable as exc:
            # GitHub answers 422 "Reference does not exist" for a branch already gone
            if "does not exist" in exc.message:
                return False
            raise
        return True

    async def _open_pull(self, repo: str, head: str) -> _Pull | None:
        owner = repo.partition("/")[0]
        params = {"head": f"{owner}:{head}", "state": "open", "per_page": "100"}
        pulls = await self.transport.pages(f"{_repo(repo)}/pulls", list[_Pull], params=params)
        return pulls[0] if pulls else None

    async def _upsert_draft_pull_request(
        self, repo: str, head: str, base: str, title: str, body: str, issue: int | None
    ) -> DraftPullRequest:
        body = with_issue_link(body, issue)
        found = await self._open_pull(repo, head)
        if found is None:
            create = {"title": title, "head": head, "base": base, "body": body, "draft": True}
            try:
                made = await self.transport.call("POST", f"{_repo(repo)}/pulls", _Pull, body=create)
                return DraftPullRequest(pull_request=_pull(made), action="created")
            except Unprocessable as exc:
                # another writer got there between our look and our create
                if "already exists" not in exc.message:
                    raise
            found = await self._open_pull(repo, head)
            if found is None:
                raise Conflict(f"github: a pull request for {head!r} exists but is not open", provider="github")
        if found.title == title and (found.body or "") == body:
            return DraftPullRequest(pull_request=_pull(found), action="unchanged")
        edited = await self.transport.call("PATCH", f"{_repo(repo)}/pulls/{found.number}", _Pull, body={"title": title, "body": body})
        return DraftPullRequest(pull_request=_pull(edited), action="updated")

    async def _get_pull_request(self, repo: str, number: int) -> PullRequest:
        return _pull(await self.transport.call("GET", f"{_repo(repo)}/pulls/{number}", _Pull))
