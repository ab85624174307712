"""A fake GitLab REST v4 under ``/api/v4``: the endpoints the adapters use, with GitLab's shapes and errors.

Projects are addressed by their URL-encoded full path (``group%2Fproject``) or
numeric id. Auth: ``PRIVATE-TOKEN`` (or ``Authorization: Bearer``). A rate limit
answers 429 "Retry later" with ``RateLimit-*`` headers and ``Retry-After``. A
status set twice to the state it is in answers GitLab's 400 "Cannot transition
status"; a second open merge request for a source branch answers 409.
"""

from __future__ import annotations

import base64
import binascii
from email.utils import formatdate
from typing import Any

from aiohttp import web

from tests.fakes.scm.model import Comment, Pull, Repo, Status, blob_sha
from tests.fakes.scm.server import ApiError, FakeScm, Throttling, paginate

_STATES = ("pending", "running", "success", "failed", "canceled", "skipped")
_DRAFT = ("draft:", "[draft]", "(draft)")
_MR_STATES = {"open": "opened", "closed": "closed", "merged": "merged"}


class FakeGitLab(FakeScm):
    provider = "gitlab"
    api_root = "/api/v4"

    def routes(self, app: web.Application) -> None:
        p = "/api/v4/projects/{project}"
        app.router.add_get(p, self._get_project)
        app.router.add_get(p + "/merge_requests/{iid:\\d+}/notes", self._list_notes)
        app.router.add_post(p + "/merge_requests/{iid:\\d+}/notes", self._create_note)
        app.router.add_put(p + "/merge_requests/{iid:\\d+}/notes/{id:\\d+}", self._edit_note)
        app.router.add_post(p + "/statuses/{sha}", self._create_status)
        app.router.add_get(p + "/repository/commits/{sha}/statuses", self._list_statuses)
        app.router.add_get(p + "/repository/branches/{branch}", self._get_branch)
        app.router.add_post(p + "/repository/branches", self._create_branch)
        app.router.add_delete(p + "/repository/branches/{branch}", self._delete_branch)
        app.router.add_get(p + "/repository/files/{path}", self._get_file)
        app.router.add_post(p + "/repository/commits", self._create_commit)
        app.router.add_get(p + "/merge_requests", self._list_mrs)
        app.router.add_post(p + "/merge_requests", self._create_mr)
        app.router.add_get(p + "/merge_requests/{iid:\\d+}", self._get_mr)
        app.router.add_put(p + "/merge_requests/{iid:\\d+}", self._edit_mr)

    # --- the middleware's hooks ------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        return self.token in (request.headers.get("PRIVATE-TOKEN"), request.headers.get("Authorization", "").removeprefix("Bearer "))

    def unauthorized(self) -> web.Response:
        return web.json_response({"message": "401 Unauthorized"}, status=401)

    def rate_limited(self, t: Throttling) -> web.Response:
        reset = self.reset_at()
        headers = {
            "RateLimit-Name": "throttle_authenticated_api", "RateLimit-Limit": "60", "RateLimit-Observed": "67",
            "RateLimit-Remaining": "0", "RateLimit-Reset": str(int(reset)), "RateLimit-ResetTime": formatdate(reset, usegmt=True),
        }  # fmt: skip
        if t.retry_after is not None:
            headers["Retry-After"] = t.retry_after
        return web.Response(status=429, text="Retry later\n", headers=headers)

    def error(self, exc: ApiError) -> web.Response:
        return web.json_response({"message": exc.message, **exc.extra}, status=exc.status)

    def repo_missing(self, name: str) -> ApiError:
        return ApiError(404, "404 Project Not Found")

    # --- shapes ------------------------------------------------------------------------

    def _repo(self, request: web.Request) -> Repo:
        key = request.match_info["project"]
        by_id = next((r for r in self.repos.values() if str(r.id) == key), None)
        return by_id or self.repo(key)

    def _commit_json(self, repo: Repo, sha: str) -> dict[str, Any]:
        commit = repo.commits[sha]
        return {
            "id": sha, "short_id": sha[:8], "title": commit.message.splitlines()[0], "message": commit.message,
            "parent_ids": [commit.parent] if commit.parent else [], "author_name": "Sluicegate Bot",
            "web_url": f"https://gitlab.example.com/{repo.name}/-/commit/{sha}",
        }  # fmt: skip

    def _branch_json(self, repo: Repo, name: str) -> dict[str, Any]:
        return {
            "name": name, "merged": False, "protected": name == repo.default_branch, "default": name == repo.default_branch,
            "can_push": True, "web_url": f"https://gitlab.example.com/{repo.name}/-/tree/{name}",
            "commit": self._commit_json(repo, repo.branches[name]),
        }  # fmt: skip

    def _mr_json(self, repo: Repo, mr: Pull) -> dict[str, Any]:
        draft = mr.title.lower().startswith(_DRAFT)
        return {
            "id": mr.number + 700_000, "iid": mr.number, "project_id": repo.id, "title": mr.title, "description": mr.body,
            "state": _MR_STATES[mr.state], "draft": draft, "work_in_progress": draft, "source_branch": mr.head,
            "target_branch": mr.base, "sha": repo.branches.get(mr.head, mr.head_sha), "author": {"username": "sluicegate-bot"},
            "web_url": f"https://gitlab.example.com/{repo.name}/-/merge_requests/{mr.number}",
        }  # fmt: skip

    def _note_json(self, mr: Pull, note: Comment) -> dict[str, Any]:
        return {
            "id": note.id, "type": None, "body": note.body, "author": {"username": note.author}, "system": False,
            "noteable_type": "MergeRequest", "noteable_iid": mr.number, "resolvable": False,
        }  # fmt: skip

    def _mr(self, repo: Repo, request: web.Request) -> Pull:
        mr = repo.pulls.get(int(request.match_info["iid"]))
        if mr is None:
            raise ApiError(404, "404 Not found")
        return mr

    # --- routes --------------------------------------------------------------------------

    async def _get_project(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        return web.json_response({
            "id": repo.id, "path_with_namespace": repo.name, "default_branch": repo.default_branch,
            "web_url": f"https://gitlab.example.com/{repo.name}",
        })  # fmt: skip

    async def _list_notes(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        mr = self._mr(repo, request)
        notes = [self._note_json(mr, n) for n in mr.comments]
        if request.query.get("sort", "desc") == "desc":
            notes.reverse()
        page, link, number, next_page = paginate(request, notes, default_per_page=20)
        headers = {"X-Page": str(number), "X-Next-Page": str(next_page or ""), "X-Total": str(len(notes))}
        if link:
            headers["Link"] = link
        return web.json_response(page, headers=headers)

    async def _create_note(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        mr = self._mr(repo, request)
        body = await self.body(request)
        if not body.get("body"):
            raise ApiError(400, '400 Bad request - Note {:note=>["can\'t be blank"]}')
        note = Comment(id=self.next_id(), body=body["body"])
        mr.comments.append(note)
        self.record("comment.create", request, body)
        return web.json_response(self._note_json(mr, note), status=201)

    async def _edit_note(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        mr = self._mr(repo, request)
        note = next((n for n in mr.comments if n.id == int(request.match_info["id"])), None)
        if note is None:
            raise ApiError(404, "404 Note Not Found")
        body = await self.body(request)
        note.body = body["body"]
        self.record("comment.update", request, body)
        return web.json_response(self._note_json(mr, note))

    def _status_json(self, status: Status) -> dict[str, Any]:
        return {
            "id": status.id, "sha": status.sha, "ref": None, "status": status.state, "name": status.context,
            "target_url": status.target_url, "description": status.description, "allow_failure": False,
        }  # fmt: skip

    async def _create_status(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        sha = request.match_info["sha"]
        if sha not in repo.commits:
            raise ApiError(404, "404 Commit Not Found")
        body = await self.body(request)
        state, name = body.get("state"), body.get("name") or body.get("context") or "default"
        if state not in _STATES:
            raise ApiError(400, "state does not have a valid value")
        latest = next((s for s in reversed(repo.statuses) if s.sha == sha and s.context == name), None)
        if latest is not None and latest.state == state:
            raise ApiError(400, f"Cannot transition status via :{_event(state)} from :{state}")
        status = Status(
            id=self.next_id(), sha=sha, context=name, state=state, description=body.get("description") or "",
            target_url=body.get("target_url"),
        )  # fmt: skip
        repo.statuses.append(status)
        self.record("status.create", request, body)
        return web.json_response(self._status_json(status), status=201)

    async def _list_statuses(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        sha, name = request.match_info["sha"], request.query.get("name")
        found = [s for s in reversed(repo.statuses) if s.sha == sha and (name is None or s.context == name)]
        return web.json_response([self._status_json(s) for s in found])

    async def _get_branch(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        branch = request.match_info["branch"]
        if branch not in repo.branches:
            raise ApiError(404, "404 Branch Not Found")
        return web.json_response(self._branch_json(repo, branch))

    async def _create_branch(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        branch, ref = request.query.get("branch"), request.query.get("ref")
        if not branch or not ref:
            raise ApiError(400, "branch is missing, ref is missing")
        sha = repo.branches.get(ref, ref if ref in repo.commits else None)
        if sha is None:
            raise ApiError(400, "Invalid reference name: " + ref)
        if branch in repo.branches:
            raise ApiError(400, "Branch already exists")
        repo.branches[branch] = sha
        self.record("branch.create", request, dict(request.query))
        return web.json_response(self._branch_json(repo, branch), status=201)

    async def _delete_branch(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        branch = request.match_info["branch"]
        if branch not in repo.branches:
            raise ApiError(404, "404 Branch Not Found")
        del repo.branches[branch]
        self.record("branch.delete", request, None)
        return web.Response(status=204)

    async def _get_file(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        ref = request.query.get("ref")
        if not ref:
            raise ApiError(400, "ref is missing")
        head = repo.head(ref) or repo.commits.get(ref)
        path = request.match_info["path"]
        if head is None or path not in head.files:
            raise ApiError(404, "404 File Not Found")
        data = head.files[path]
        last = head
        while last.parent is not None and repo.commits[last.parent].files.get(path) == data:
            last = repo.commits[last.parent]
        return web.json_response({
            "file_name": path.rsplit("/", 1)[-1], "file_path": path, "size": len(data), "encoding": "base64",
            "content": base64.b64encode(data).decode(), "ref": ref, "blob_id": blob_sha(data), "commit_id": head.sha,
            "last_commit_id": last.sha, "execute_filemode": False,
        })  # fmt: skip

    async def _create_commit(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        body = await self.body(request)
        branch = body.get("branch", "")
        head = repo.head(branch)
        if head is None:
            raise ApiError(400, "You can only create or edit files when you are on a branch")
        changes: dict[str, bytes] = {}
        for action in body.get("actions", []):
            path, kind = action.get("file_path", ""), action.get("action")
            try:
                raw = action.get("content", "")
                data = base64.b64decode(raw, validate=True) if action.get("encoding") == "base64" else raw.encode()
            except binascii.Error:
                raise ApiError(400, "content is not valid base64") from None
            if kind == "create" and path in head.files:
                raise ApiError(400, "A file with this name already exists")
            if kind == "update" and path not in head.files:
                raise ApiError(400, "A file with this name doesn't exist")
            if kind == "update" and action.get("last_commit_id") not in (None, *self._touching(repo, head.sha, path)):
                raise ApiError(400, "You are attempting to update a file that has changed since you started editing it.")
            if kind not in ("create", "update"):
                raise ApiError(400, "actions[0][action] does not have a valid value")
            changes[path] = data
        if not changes or not body.get("commit_message"):
            raise ApiError(400, "commit_message is missing, actions is missing")
        made = repo.commit(branch, changes, body["commit_message"])
        self.record("commit.create", request, body)
        return web.json_response(self._commit_json(repo, made.sha), status=201)

    @staticmethod
    def _touching(repo: Repo, sha: str, path: str) -> list[str]:
        """Commits, newest first, whose file at ``path`` equals the head's: any is a valid last_commit_id."""
        data = repo.commits[sha].files.get(path)
        found = []
        commit = repo.commits[sha]
        while commit.files.get(path) == data:
            found.append(commit.sha)
            if commit.parent is None:
                break
            commit = repo.commits[commit.parent]
        return found

    async def _list_mrs(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        state, source = request.query.get("state", "all"), request.query.get("source_branch")
        found = [
            self._mr_json(repo, m) for m in sorted(repo.pulls.values(), key=lambda m: -m.number)
            if (state == "all" or _MR_STATES[m.state] == state) and (source is None or m.head == source)
        ]  # fmt: skip
        page, link, _, _ = paginate(request, found, default_per_page=20)
        return web.json_response(page, headers={"Link": link} if link else None)

    async def _create_mr(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        body = await self.body(request)
        source, target = body.get("source_branch", ""), body.get("target_branch", "")
        if source not in repo.branches or target not in repo.branches:
            raise ApiError(400, "Invalid source or target branch")
        existing = repo.open_pull(source, target)
        if existing is not None:
            raise ApiError(409, [f"Another open merge request already exists for this source branch: !{existing.number}"])
        mr = Pull(
            number=max(repo.pulls, default=0) + 1, head=source, base=target, title=body.get("title", ""),
            body=body.get("description") or "", draft=False, head_sha=repo.branches[source],
        )  # fmt: skip
        repo.pulls[mr.number] = mr
        self.record("pull.create", request, body)
        return web.json_response(self._mr_json(repo, mr), status=201)

    async def _get_mr(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        return web.json_response(self._mr_json(repo, self._mr(repo, request)))

    async def _edit_mr(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        mr = self._mr(repo, request)
        body = await self.body(request)
        mr.title = body.get("title", mr.title)
        mr.body = body.get("description", mr.body)
        self.record("pull.update", request, body)
        return web.json_response(self._mr_json(repo, mr))


def _event(state: str) -> str:
    return {"pending": "enqueue", "running": "run", "success": "succeed", "failed": "drop", "canceled": "cancel"}.get(state, state)
