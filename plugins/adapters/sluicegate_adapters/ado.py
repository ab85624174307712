"""Azure DevOps Git REST 7.1: pull request threads, statuses, refs, items, pushes, pull requests.

Base URL: the organization, ``https://dev.azure.com/ORG`` (Server:
``https://HOST/COLLECTION``); a repository is ``project/repository``. The token
is a personal access token, sent as Basic auth with an empty user name.
Rate limits: 429 with ``Retry-After``, else ``X-RateLimit-Reset`` (epoch seconds).
A refused PAT can come back as a 203 with a sign-in page: that is ``Unauthorized``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Generic, TypeVar
from urllib.parse import quote

import msgspec

from sluicegate_adapters.client import ScmClient
from sluicegate_adapters.errors import Conflict, NotFound
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
)
from sluicegate_adapters.retry import parse_retry_after, seconds_until_epoch
from sluicegate_adapters.transport import Dialect, Throttle

API_VERSION = "7.1"
ZERO_SHA = "0" * 40
_STATES: dict[StatusState, str] = {"pending": "pending", "success": "succeeded", "failure": "failed", "error": "error"}
_PULL_STATES: dict[str, PullState] = {"active": "open", "completed": "merged", "abandoned": "closed"}

T = TypeVar("T")


class _List(msgspec.Struct, Generic[T]):
    value: list[T]
    count: int = 0


class _Comment(msgspec.Struct, rename="camel"):
    id: int
    content: str | None = None
    is_deleted: bool = False


class _Thread(msgspec.Struct, rename="camel"):
    id: int
    comments: list[_Comment] = []
    is_deleted: bool = False


class _Context(msgspec.Struct):
    name: str
    genre: str | None = None


class _Status(msgspec.Struct):
    id: int
    state: str
    context: _Context


class _Ref(msgspec.Struct, rename="camel"):
    name: str
    object_id: str


class _RefUpdate(msgspec.Struct, rename="camel"):
    name: str
    success: bool = True
    update_status: str = "succeeded"


class _Repository(msgspec.Struct, rename="camel"):
    id: str
    name: str
    default_branch: str | None = None


class _Item(msgspec.Struct, rename="camel"):
    object_id: str


class _PushedRef(msgspec.Struct, rename="camel"):
    name: str
    new_object_id: str


class _Push(msgspec.Struct, rename="camel"):
    ref_updates: list[_PushedRef]


class _CommitId(msgspec.Struct, rename="camel"):
    commit_id: str


class _PullRequest(msgspec.Struct, rename="camel"):
    pull_request_id: int
    status: str
    title: str
    source_ref_name: str
    target_ref_name: str
    description: str | None = None
    is_draft: bool = False
    last_merge_source_commit: _CommitId | None = None


class _ErrorBody(msgspec.Struct):
    message: str = ""


class AzureDevOpsDialect(Dialect):
    name = "ado"

    def auth_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f":{token}".encode()).decode(), "Accept": "application/json"}

    def throttle(self, status: int, headers: Mapping[str, str], message: str, now: float) -> Throttle | None:
        if status != 429:
            return None
        asked = parse_retry_after(headers.get("Retry-After"), now)
        if asked is None:
            asked = seconds_until_epoch(headers.get("X-RateLimit-Reset"), now) or None
        return Throttle(asked)

    def error_message(self, body: bytes) -> str:
        try:
            return msgspec.json.decode(body, type=_ErrorBody).message
        except msgspec.DecodeError:
            return ""

    def refused(self, status: int, headers: Mapping[str, str]) -> bool:
        return status == 203


def _heads(branch: str) -> str:
    return branch if branch.startswith("refs/") else f"refs/heads/{branch}"


def _branch(ref: str) -> str:
    return ref.removeprefix("refs/heads/")


class AzureDevOpsClient(ScmClient):
    def _repo(self, repo: str) -> str:
        project, _, name = repo.partition("/")
        if not project or not name or "/" in name:
            raise ValueError(f"ado: a repository is 'project/repository', not {repo!r}")
        return f"/{quote(project, safe='')}/_apis/git/repositories/{quote(name, safe='')}"

    def _web(self, repo: str, number: int) -> str:
        project, _, name = repo.partition("/")
        return f"{self.transport.base_url}/{quote(project, safe='')}/_git/{quote(name, safe='')}/pullrequest/{number}"

    async def _get(self, resource: str, into: type[T], **params: str) -> T:
        return await self.transport.call("GET", resource, into, params={**params, "api-version": API_VERSION})

    async def _write(self, method: str, resource: str, into: type[T], body: object) -> T:
        return await self.transport.call(method, resource, into, params={"api-version": API_VERSION}, body=body)

    async def _upsert_comment(self, repo: str, pr: int, marker: str, body: str) -> CommentRef:
        tag, text = marker_tag(marker), marked_body(marker, body)
        where = f"{self._repo(repo)}/pullRequests/{pr}/threads"
        threads = (await self._get(where, _List[_Thread])).value
        live = ((t, c) for t in threads if not t.is_deleted for c in t.comments if not c.is_deleted)
        found = next(((t, c) for t, c in live if tag in (c.content or "")), None)
        if found is None:
            thread = {"comments": [{"parentCommentId": 0, "content": text, "commentType": 1}], "status": 1}
            made = await self._write("POST", where, _Thread, thread)
            first = made.comments[0].id if made.comments else 1
            return CommentRef(id=f"{made.id}/{first}", url=f"{self._web(repo, pr)}?discussionId={made.id}", action="created")
        thread_, comment = found
        ref = f"{thread_.id}/{comment.id}"
        url = f"{self._web(repo, pr)}?discussionId={thread_.id}"
        if comment.content == text:
            return CommentRef(id=ref, url=url, action="unchanged")
        await self._write("PATCH", f"{where}/{thread_.id}/comments/{comment.id}", _Comment, {"content": text})
        return CommentRef(id=ref, url=url, action="updated")

    async def _set_status(
        self, repo: str, sha: str, context: str, state: StatusState, description: str, target_url: str | None, pr: int | None
    ) -> StatusRef:
        genre, _, name = context.rpartition("/")
        status: dict[str, object] = {"state": _STATES[state], "description": description, "context": {"name": name, "genre": genre or None}}
        if target_url is not None:
            status["targetUrl"] = target_url
        # a pull request status gates the pull request's policies; a commit status only shows on the commit
        where = f"{self._repo(repo)}/pullRequests/{pr}/statuses" if pr is not None else f"{self._repo(repo)}/commits/{sha}/statuses"
        made = await self._write("POST", where, _Status, status)
        return StatusRef(id=str(made.id), sha=sha, context=context, state=state)

    async def _branch_sha(self, repo: str, name: str) -> str | None:
        # the filter is a prefix match: heads/feat also lists heads/feature
        refs = (await self._get(f"{self._repo(repo)}/refs", _List[_Ref], filter=_heads(name).removeprefix("refs/"))).value
        return next((r.object_id for r in refs if r.name == _heads(name)), None)

    async def _resolve(self, repo: str, ref: str | None) -> str:
        if ref is not None and is_sha(ref):
            return ref
        if ref is None:
            ref = (await self._get(self._repo(repo), _Repository)).default_branch
            if ref is None:
                raise NotFound(f"ado: {repo} has no default branch (an empty repository)", provider="ado")
        sha = await self._branch_sha(repo, ref)
        if sha is None:
            raise NotFound(f"ado: {repo} has no branch {_branch(ref)!r}", provider="ado", scm_status=404)
        return sha

    async def _update_ref(self, repo: str, name: str, old: str, new: str) -> _RefUpdate:
        update = [{"name": _heads(name), "oldObjectId": old, "newObjectId": new}]
        return (await self._write("POST", f"{self._repo(repo)}/refs", _List[_RefUpdate], update)).value[0]

    async def _create_branch(self, repo: str, name: str, from_ref: str | None) -> BranchRef:
        sha = await self._resolve(repo, from_ref)
        existing = await self._branch_sha(repo, name)
        if existing is None:
            try:
                if (await self._update_ref(repo, name, ZERO_SHA, sha)).success:
                    return BranchRef(name=name, sha=sha, action="created")
            except Conflict:
                pass
            existing = await self._branch_sha(repo, name)
        if existing != sha:
            where = from_ref or "the default branch"
            raise Conflict(f"ado: branch {name!r} of {repo} exists at another commit than {where}", provider="ado")
        return BranchRef(name=name, sha=sha, action="unchanged")

    async def _commit_file(self, repo: str, branch: str, path: str, content: str | bytes, message: str) -> CommitRef:
        data = as_bytes(content)
        path = path.lstrip("/")
        item = "/" + path
        head = await self._resolve(repo, branch)
        version = {"versionDescriptor.version": _branch(branch), "versionDescriptor.versionType": "branch"}
        try:
            current: _Item | None = await self._get(f"{self._repo(repo)}/items", _Item, path=item, **{"$format": "json"}, **version)
        except NotFound:
            current = None
        if current is not None and current.object_id == blob_sha(data):
            return CommitRef(branch=branch, path=path, sha=head, action="unchanged")
        change = {
            "changeType": "edit" if current is not None else "add",
            "item": {"path": item},
            "newContent": {"content": base64.b64encode(data).decode(), "contentType": "base64encoded"},
        }
        # oldObjectId makes the push fail (409) if the branch moved since the read
        push = {"refUpdates": [{"name": _heads(branch), "oldObjectId": head}], "commits": [{"comment": message, "changes": [change]}]}
        made = await self._write("POST", f"{self._repo(repo)}/pushes", _Push, push)
        return CommitRef(branch=branch, path=path, sha=made.ref_updates[0].new_object_id, action="updated" if current else "created")

    async def _delete_branch(self, repo: str, name: str) -> bool:
        existing = await self._branch_sha(repo, name)
        if existing is None:
            return False
        update = await self._update_ref(repo, name, existing, ZERO_SHA)
        if not update.success:
            raise Conflict(f"ado: deleting branch {name!r} of {repo} failed: {update.update_status}", provider="ado")
        return update.update_status != "succeededNonExistentRef"

    def _pull(self, repo: str, pr: _PullRequest) -> PullRequest:
        head_sha = pr.last_merge_source_commit.commit_id if pr.last_merge_source_commit else None
        return PullRequest(
            number=pr.pull_request_id, url=self._web(repo, pr.pull_request_id), state=_PULL_STATES.get(pr.status, "closed"),
            draft=pr.is_draft, title=pr.title, body=pr.description or "", head=_branch(pr.source_ref_name),
            base=_branch(pr.target_ref_name), head_sha=head_sha,
        )  # fmt: skip

    async def _active_pull(self, repo: str, head: str) -> _PullRequest | None:
        criteria = {"searchCriteria.sourceRefName": _heads(head), "searchCriteria.status": "active"}
        found = (await self._get(f"{self._repo(repo)}/pullrequests", _List[_PullRequest], **criteria)).value
        return found[0] if found else None

    async def _upsert_draft_pull_request(
        self, repo: str, head: str, base: str, title: str, body: str, issue: int | None
    ) -> DraftPullRequest:
        found = await self._active_pull(repo, head)
        if found is None:
            create: dict[str, object] = {
                "sourceRefName": _heads(head), "targetRefName": _heads(base), "title": title, "description": body, "isDraft": True,
            }  # fmt: skip
            if issue is not None:
                create["workItemRefs"] = [{"id": str(issue)}]
            try:
                made = await self._write("POST", f"{self._repo(repo)}/pullrequests", _PullRequest, create)
                return DraftPullRequest(pull_request=self._pull(repo, made), action="created")
            except Conflict:
                # TF401179, an active pull request for these branches exists: another writer won the race
                found = await self._active_pull(repo, head)
                if found is None:
                    raise
        if found.title == title and (found.description or "") == body:
            return DraftPullRequest(pull_request=self._pull(repo, found), action="unchanged")
        edit = {"title": title, "description": body}
        edited = await self._write("PATCH", f"{self._repo(repo)}/pullrequests/{found.pull_request_id}", _PullRequest, edit)
        return DraftPullRequest(pull_request=self._pull(repo, edited), action="updated")

    async def _get_pull_request(self, repo: str, number: int) -> PullRequest:
        return self._pull(repo, await self._get(f"{self._repo(repo)}/pullrequests/{number}", _PullRequest))
