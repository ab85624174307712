"""GitLab REST v4: merge request notes, commit statuses, branches, repository files and commits, merge requests.

Base URL: the API root, ``https://gitlab.com/api/v4``. A project is named by its
full path (``group/subgroup/project``, sent URL-encoded) or its numeric id.
Rate limits: 429 with ``Retry-After``, else ``RateLimit-Reset`` (epoch seconds),
else ``RateLimit-ResetTime`` (an HTTP date).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import quote

import msgspec

from sluicegate_adapters.client import ScmClient
from sluicegate_adapters.errors import BadRequest, Conflict, NotFound
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

DRAFT_PREFIX = "Draft: "
_DRAFT_PREFIXES = ("draft:", "[draft]", "(draft)")
_STATES: dict[StatusState, str] = {"pending": "pending", "success": "success", "failure": "failed", "error": "failed"}
_PULL_STATES: dict[str, PullState] = {"opened": "open", "merged": "merged", "closed": "closed", "locked": "closed"}


class _Note(msgspec.Struct):
    id: int
    body: str = ""
    system: bool = False


class _Status(msgspec.Struct):
    id: int
    status: str
    name: str


class _Commit(msgspec.Struct):
    id: str


class _Branch(msgspec.Struct):
    name: str
    commit: _Commit


class _Project(msgspec.Struct):
    id: int
    default_branch: str | None = None


class _File(msgspec.Struct):
    blob_id: str
    last_commit_id: str = ""


class _MergeRequest(msgspec.Struct):
    iid: int
    state: str
    title: str
    source_branch: str
    target_branch: str
    description: str | None = None
    web_url: str = ""
    draft: bool = False
    sha: str | None = None


class _ErrorBody(msgspec.Struct):
    message: str | list[str] | dict[str, list[str]] | None = None
    error: str | None = None


class GitLabDialect(Dialect):
    name = "gitlab"

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"PRIVATE-TOKEN": token}

    def throttle(self, status: int, headers: Mapping[str, str], message: str, now: float) -> Throttle | None:
        if status != 429:
            return None
        asked = parse_retry_after(headers.get("Retry-After"), now)
        if asked is None:
            asked = seconds_until_epoch(headers.get("RateLimit-Reset"), now) or None
        if asked is None:
            asked = parse_retry_after(headers.get("RateLimit-ResetTime"), now) or None
        return Throttle(asked)

    def error_message(self, body: bytes) -> str:
        try:
            error = msgspec.json.decode(body, type=_ErrorBody)
        except msgspec.DecodeError:
            return body[:200].decode(errors="replace").strip() if body[:1] not in (b"<", b"{", b"[") else ""
        message = error.message
        if isinstance(message, list):
            return "; ".join(message)
        if isinstance(message, dict):
            return "; ".join(f"{field} {' '.join(problems)}" for field, problems in message.items())
        return message or error.error or ""


def _project(repo: str) -> str:
    if not repo.strip("/"):
        raise ValueError("gitlab: a project is its full path or its numeric id")
    return f"/projects/{quote(repo.strip('/'), safe='')}"


def _is_draft(title: str) -> bool:
    return title.lower().startswith(_DRAFT_PREFIXES)


def _pull(mr: _MergeRequest) -> PullRequest:
    return PullRequest(
        number=mr.iid, url=mr.web_url, state=_PULL_STATES.get(mr.state, "closed"), draft=mr.draft or _is_draft(mr.title),
        title=mr.title, body=mr.description or "", head=mr.source_branch, base=mr.target_branch, head_sha=mr.sha,
    )  # fmt: skip


class GitLabClient(ScmClient):
    async def _upsert_comment(self, repo: str, pr: int, marker: str, body: str) -> CommentRef:
        tag, text = marker_tag(marker), marked_body(marker, body)
        where = f"{_project(repo)}/merge_requests/{pr}/notes"
        params = {"per_page": "100", "sort": "asc", "order_by": "created_at"}
        notes = await self.transport.pages(where, list[_Note], params=params)
        found = next((n for n in notes if not n.system and tag in n.body), None)
        if found is None:
            made = await self.transport.call("POST", where, _Note, body={"body": text})
            return CommentRef(id=str(made.id), url="", action="created")
        if found.body == text:
            return CommentRef(id=str(found.id), url="", action="unchanged")
        await self.transport.call("PUT", f"{where}/{found.id}", _Note, body={"body": text})
        return CommentRef(id=str(found.id), url="", action="updated")

    async def _set_status(
        self, repo: str, sha: str, context: str, state: StatusState, description: str, target_url: str | None, pr: int | None
    ) -> StatusRef:
        status = {"state": _STATES[state], "name": context, "description": description}
        if target_url is not None:
            status["target_url"] = target_url
        try:
            made = await self.transport.call("POST", f"{_project(repo)}/statuses/{sha}", _Status, body=status)
        except BadRequest as exc:
            # GitLab refuses to move a status to the state it is already in
            if "Cannot transition status" not in exc.message:
                raise
            params = {"name": context}
            latest = await self.transport.call("GET", f"{_project(repo)}/repository/commits/{sha}/statuses", list[_Status], params=params)
            if not latest:
                raise
            made = latest[0]
        return StatusRef(id=str(made.id), sha=sha, context=made.name, state=state)

    async def _branch_sha(self, repo: str, name: str) -> str | None:
        try:
            branch = await self.transport.call("GET", f"{_project(repo)}/repository/branches/{quote(name, safe='')}", _Branch)
        except NotFound:
            return None
        return branch.commit.id

    async def _resolve(self, repo: str, ref: str | None) -> tuple[str, str]:
        """``ref`` (None: the default branch) --> (what to branch from, its commit sha)."""
        if ref is not None and is_sha(ref):
            return ref, ref
        if ref is None:
            ref = (await self.transport.call("GET", _project(repo), _Project)).default_branch
            if ref is None:
                raise NotFound(f"gitlab: {repo} has no default branch (an empty repository)", provider="gitlab")
        sha = await self._branch_sha(repo, ref)
        if sha is None:
            raise NotFound(f"gitlab: {repo} has no branch {ref!r}", provider="gitlab", scm_status=404)
        return ref, sha

    async def _create_branch(self, repo: str, name: str, from_ref: str | None) -> BranchRef:
        _, sha = await self._resolve(repo, from_ref)
        existing = await self._branch_sha(repo, name)
        if existing is None:
            try:
                made = await self.transport.call(
                    "POST", f"{_project(repo)}/repository/branches", _Branch, params={"branch": name, "ref": sha}
                )
                return BranchRef(name=name, sha=made.commit.id, action="created")
            except BadRequest as exc:
                if "already exists" not in exc.message:
                    raise
            existing = await self._branch_sha(repo, name)
        if existing != sha:
            where = from_ref or "the default branch"
            raise Conflict(f"gitlab: branch {name!r} of {repo} exists at another commit than {where}", provider="gitlab")
        return BranchRef(name=name, sha=sha, action="unchanged")

    async def _commit_file(self, repo: str, branch: str, path: str, content: str | bytes, message: str) -> CommitRef:
        data = as_bytes(content)
        path = path.lstrip("/")
        try:
            where = f"{_project(repo)}/repository/files/{quote(path, safe='')}"
            current: _File | None = await self.transport.call("GET", where, _File, params={"ref": branch})
        except NotFound:
            current = None
        if current is not None and current.blob_id == blob_sha(data):
            _, head = await self._resolve(repo, branch)
            return CommitRef(branch=branch, path=path, sha=head, action="unchanged")
        action = {"action": "create", "file_path": path, "content": base64.b64encode(data).decode(), "encoding": "base64"}
        if current is not None:
            # GitLab refuses the update if the file changed since this read
            action |= {"action": "update", "last_commit_id": current.last_commit_id}
        commit = {"branch": branch, "commit_message": message, "actions": [action]}
        made = await self.transport.call("POST", f"{_project(repo)}/repository/commits", _Commit, body=commit)
        return CommitRef(branch=branch, path=path, sha=made.id, action="updated" if current else "created")

    async def _delete_branch(self, repo: str, name: str) -> bool:
        try:
            await self.transport.send("DELETE", f"{_project(repo)}/repository/branches/{quote(name, safe='')}")
        except NotFound as exc:
            if "Branch Not Found" not in exc.message:
                raise
            return False
        return True

    async def _open_merge_request(self, repo: str, head: str) -> _MergeRequest | None:
        params = {"source_branch": head, "state": "opened", "per_page": "100"}
        found = await self.transport.pages(f"{_project(repo)}/merge_requests", list[_MergeRequest], params=params)
        return found[0] if found else None

    async def _upsert_draft_pull_request(
        self, repo: str, head: str, base: str, title: str, body: str, issue: int | None
    ) -> DraftPullRequest:
        body = with_issue_link(body, issue)
        found = await self._open_merge_request(repo, head)
        if found is None:
            draft_title = title if _is_draft(title) else DRAFT_PREFIX + title
            create = {"source_branch": head, "target_branch": base, "title": draft_title, "description": body}
            try:
                made = await self.transport.call("POST", f"{_project(repo)}/merge_requests", _MergeRequest, body=create)
                return DraftPullRequest(pull_request=_pull(made), action="created")
            except Conflict:
                # "Another open merge request already exists for this source branch": another writer won the race
                found = await self._open_merge_request(repo, head)
                if found is None:
                    raise
        # a merge request someone marked ready stays ready
        want = DRAFT_PREFIX + title if found.draft and not _is_draft(title) else title
        if found.title == want and (found.description or "") == body:
            return DraftPullRequest(pull_request=_pull(found), action="unchanged")
        edit = {"title": want, "description": body}
        edited = await self.transport.call("PUT", f"{_project(repo)}/merge_requests/{found.iid}", _MergeRequest, body=edit)
        return DraftPullRequest(pull_request=_pull(edited), action="updated")

    async def _get_pull_request(self, repo: str, number: int) -> PullRequest:
        return _pull(await self.transport.call("GET", f"{_project(repo)}/merge_requests/{number}", _MergeRequest))
