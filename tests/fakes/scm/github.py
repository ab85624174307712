"""A fake GitHub REST v3: the endpoints the adapters use, with GitHub's shapes, errors and rate limits.

Auth: ``Authorization: Bearer <token>`` (or ``token <token>``); a wrong one gets
401 "Bad credentials". Every answer carries ``x-ratelimit-*`` counters. A
primary rate limit answers 403 (or ``Throttling.status``) with
``x-ratelimit-remaining: 0`` and ``x-ratelimit-reset``; a secondary one answers
403 with ``retry-after`` and GitHub's "secondary rate limit" message.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes.scm.model import Comment, Pull, Repo, Status, blob_sha
from tests.fakes.scm.server import ApiError, FakeScm, Throttling, paginate

DOCS = "https://docs.github.com/rest"
_STATES = ("error", "failure", "pending", "success")


def _when() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeGitHub(FakeScm):
    provider = "github"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remaining = 5000

    def routes(self, app: web.Application) -> None:
        r = "/repos/{owner}/{name}"
        app.router.add_get(r, self._get_repo)
        app.router.add_get(r + "/issues/{number:\\d+}/comments", self._list_comments)
        app.router.add_post(r + "/issues/{number:\\d+}/comments", self._create_comment)
        app.router.add_patch(r + "/issues/comments/{id:\\d+}", self._edit_comment)
        app.router.add_post(r + "/statuses/{sha}", self._create_status)
        app.router.add_get(r + "/git/ref/heads/{branch:.+}", self._get_ref)
        app.router.add_post(r + "/git/refs", self._create_ref)
        app.router.add_delete(r + "/git/refs/heads/{branch:.+}", self._delete_ref)
        app.router.add_get(r + "/contents/{path:.+}", self._get_contents)
        app.router.add_put(r + "/contents/{path:.+}", self._put_contents)
        app.router.add_get(r + "/pulls", self._list_pulls)
        app.router.add_post(r + "/pulls", self._create_pull)
        app.router.add_get(r + "/pulls/{number:\\d+}", self._get_pull)
        app.router.add_patch(r + "/pulls/{number:\\d+}", self._edit_pull)

    # --- the middleware's hooks ------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") in (f"Bearer {self.token}", f"token {self.token}")

    def unauthorized(self) -> web.Response:
        return web.json_response({"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}, status=401)

    def rate_limited(self, t: Throttling) -> web.Response:
        headers = {"x-ratelimit-limit": "5000", "x-ratelimit-resource": "core"}
        if t.secondary:
            message = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
            headers["x-ratelimit-remaining"] = str(self.remaining)
            status = 403
        else:
            message = "API rate limit exceeded for user ID 1."
            headers |= {"x-ratelimit-remaining": "0", "x-ratelimit-used": "5000", "x-ratelimit-reset": str(int(self.reset_at()))}
            status = t.status
        if t.retry_after is not None:
            headers["retry-after"] = t.retry_after
        return web.json_response({"message": message, "documentation_url": DOCS}, status=status, headers=headers)

    def error(self, exc: ApiError) -> web.Response:
        body: dict[str, Any] = {"message": exc.message, "documentation_url": DOCS, "status": str(exc.status), **exc.extra}
        return web.json_response(body, status=exc.status)

    def repo_missing(self, name: str) -> ApiError:
        return ApiError(404, "Not Found")

    def decorate(self, response: web.StreamResponse) -> None:
        if "x-ratelimit-remaining" not in response.headers:
            self.remaining = max(0, self.remaining - 1)
            response.headers["x-ratelimit-limit"] = "5000"
            response.headers["x-ratelimit-remaining"] = str(self.remaining)
            response.headers["x-ratelimit-reset"] = str(int(self.reset_at()))

    # --- shapes ----------------------------------------------------------------------

    def _repo(self, request: web.Request) -> Repo:
        return self.repo(f"{request.match_info['owner']}/{request.match_info['name']}")

    def _api(self, request: web.Request, tail: str) -> str:
        return f"{request.url.origin()}/repos/{self._repo(request).name}/{tail}"

    def _pull_json(self, request: web.Request, repo: Repo, pull: Pull) -> dict[str, Any]:
        owner = repo.name.split("/")[0]
        return {
            "id": pull.number + 500_000, "number": pull.number, "state": "closed" if pull.state != "open" else "open",
            "title": pull.title, "body": pull.body or None, "draft": pull.draft, "user": {"login": "sluicegate-bot"},
            "html_url": f"https://github.com/{repo.name}/pull/{pull.number}", "url": self._api(request, f"pulls/{pull.number}"),
            "head": {"ref": pull.head, "sha": repo.branches.get(pull.head, pull.head_sha), "label": f"{owner}:{pull.head}"},
            "base": {"ref": pull.base, "sha": repo.branches.get(pull.base), "label": f"{owner}:{pull.base}"},
            "merged_at": _when() if pull.state == "merged" else None, "created_at": _when(), "updated_at": _when(),
        }  # fmt: skip

    def _comment_json(self, request: web.Request, repo: Repo, pull: Pull, comment_id: int, body: str) -> dict[str, Any]:
        return {
            "id": comment_id, "node_id": f"IC_{comment_id}", "body": body, "user": {"login": "sluicegate-bot", "type": "Bot"},
            "url": self._api(request, f"issues/comments/{comment_id}"),
            "html_url": f"https://github.com/{repo.name}/pull/{pull.number}#issuecomment-{comment_id}",
            "issue_url": self._api(request, f"issues/{pull.number}"), "created_at": _when(), "updated_at": _when(),
            "author_association": "NONE",
        }  # fmt: skip

    def _ref_json(self, request: web.Request, branch: str, sha: str) -> dict[str, Any]:
        return {
            "ref": f"refs/heads/{branch}", "node_id": f"REF_{branch}", "url": self._api(request, f"git/refs/heads/{branch}"),
            "object": {"sha": sha, "type": "commit", "url": self._api(request, f"git/commits/{sha}")},
        }  # fmt: skip

    # --- routes ------------------------------------------------------------------------

    async def _get_repo(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        owner, name = repo.name.split("/")
        return web.json_response({
            "id": repo.id, "name": name, "full_name": repo.name, "owner": {"login": owner}, "private": False,
            "default_branch": repo.default_branch, "html_url": f"https://github.com/{repo.name}",
        })  # fmt: skip

    def _pull(self, repo: Repo, request: web.Request) -> Pull:
        pull = repo.pulls.get(int(request.match_info["number"]))
        if pull is None:
            raise ApiError(404, "Not Found")
        return pull

    async def _list_comments(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        pull = self._pull(repo, request)
        items = [self._comment_json(request, repo, pull, c.id, c.body) for c in pull.comments]
        page, link, _, _ = paginate(request, items)
        return web.json_response(page, headers={"Link": link} if link else None)

    async def _create_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        pull = self._pull(repo, request)
        body = await self.body(request)
        if not isinstance(body.get("body"), str):
            raise ApiError(422, 'Invalid request.\n\n"body" wasn\'t supplied.')
        comment = Comment(id=self.next_id(), body=body["body"])
        pull.comments.append(comment)
        self.record("comment.create", request, body)
        return web.json_response(self._comment_json(request, repo, pull, comment.id, comment.body), status=201)

    async def _edit_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        wanted = int(request.match_info["id"])
        for pull in repo.pulls.values():
            for comment in pull.comments:
                if comment.id == wanted:
                    body = await self.body(request)
                    comment.body = body["body"]
                    self.record("comment.update", request, body)
                    return web.json_response(self._comment_json(request, repo, pull, comment.id, comment.body))
        raise ApiError(404, "Not Found")

    async def _create_status(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        sha = request.match_info["sha"]
        body = await self.body(request)
        if sha not in repo.commits:
            raise ApiError(422, f"No commit found for SHA: {sha}")
        if body.get("state") not in _STATES:
            raise ApiError(422, "Validation Failed", errors=[{"resource": "Status", "field": "state", "code": "custom"}])
        status = Status(
            id=self.next_id(), sha=sha, context=body.get("context", "default"), state=body["state"],
            description=body.get("description") or "", target_url=body.get("target_url"),
        )  # fmt: skip
        repo.statuses.append(status)
        self.record("status.create", request, body)
        return web.json_response(
            {
                "id": status.id, "url": self._api(request, f"statuses/{sha}"), "state": status.state, "context": status.context,
                "description": status.description, "target_url": status.target_url, "created_at": _when(), "updated_at": _when(),
                "creator": {"login": "sluicegate-bot"},
            },
            status=201,
        )  # fmt: skip

    async def _get_ref(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        branch = request.match_info["branch"]
        if branch not in repo.branches:
            raise ApiError(404, "Not Found")
        return web.json_response(self._ref_json(request, branch, repo.branches[branch]))

    async def _create_ref(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        body = await self.body(request)
        ref, sha = body.get("ref", ""), body.get("sha", "")
        if not ref.startswith("refs/") or ref.count("/") < 2:
            raise ApiError(422, "Reference name must start with 'refs/' and have at least two slashes.")
        if sha not in repo.commits:
            raise ApiError(422, "Object does not exist")
        branch = ref.removeprefix("refs/heads/")
        if branch in repo.branches:
            raise ApiError(422, "Reference already exists")
        repo.branches[branch] = sha
        self.record("branch.create", request, body)
        return web.json_response(self._ref_json(request, branch, sha), status=201)

    async def _delete_ref(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        branch = request.match_info["branch"]
        if branch not in repo.branches:
            raise ApiError(422, "Reference does not exist")
        del repo.branches[branch]
        self.record("branch.delete", request, None)
        return web.Response(status=204)

    async def _get_contents(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        ref = request.query.get("ref", repo.default_branch)
        head = repo.head(ref) or repo.commits.get(ref)
        if head is None:
            raise ApiError(404, f"No commit found for the ref {ref}")
        path = request.match_info["path"]
        if path not in head.files:
            raise ApiError(404, "Not Found")
        data = head.files[path]
        return web.json_response({
            "type": "file", "encoding": "base64", "size": len(data), "name": path.rsplit("/", 1)[-1], "path": path,
            "content": base64.encodebytes(data).decode(), "sha": blob_sha(data),
            "url": self._api(request, f"contents/{path}?ref={ref}"),
        })  # fmt: skip

    async def _put_contents(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        path = request.match_info["path"]
        body = await self.body(request)
        branch = body.get("branch", repo.default_branch)
        head = repo.head(branch)
        if head is None:
            raise ApiError(404, f"Branch {branch} not found")
        if not body.get("message") or "content" not in body:
            raise ApiError(422, 'Invalid request.\n\n"message", "content" weren\'t supplied.')
        try:
            data = base64.b64decode(body["content"], validate=True)
        except binascii.Error:
            raise ApiError(422, "content is not valid Base64") from None
        exists = path in head.files
        if exists and "sha" not in body:
            raise ApiError(422, 'Invalid request.\n\n"sha" wasn\'t supplied.')
        if exists and body["sha"] != blob_sha(head.files[path]):
            raise ApiError(409, f"{path} does not match {body['sha']}")
        made = repo.commit(branch, {path: data}, body["message"])
        self.record("commit.create", request, body)
        content = {"name": path.rsplit("/", 1)[-1], "path": path, "sha": blob_sha(data), "size": len(data), "type": "file"}
        commit = {"sha": made.sha, "message": made.message, "parents": [{"sha": made.parent}]}
        return web.json_response({"content": content, "commit": commit}, status=200 if exists else 201)

    async def _list_pulls(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        state = request.query.get("state", "open")
        head = request.query.get("head")
        owner = repo.name.split("/")[0]
        found = [
            p for p in sorted(repo.pulls.values(), key=lambda p: -p.number)
            if (state == "all" or (p.state == "open") == (state == "open")) and (head is None or head == f"{owner}:{p.head}")
        ]  # fmt: skip
        page, link, _, _ = paginate(request, [self._pull_json(request, repo, p) for p in found])
        return web.json_response(page, headers={"Link": link} if link else None)

    async def _create_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        body = await self.body(request)
        head, base = body.get("head", ""), body.get("base", "")
        head = head.split(":", 1)[-1]
        if head not in repo.branches:
            raise ApiError(422, "Validation Failed", errors=[{"resource": "PullRequest", "field": "head", "code": "invalid"}])
        if base not in repo.branches:
            raise ApiError(422, "Validation Failed", errors=[{"resource": "PullRequest", "field": "base", "code": "invalid"}])
        owner = repo.name.split("/")[0]
        if repo.open_pull(head, base) is not None:
            custom = {"resource": "PullRequest", "code": "custom", "message": f"A pull request already exists for {owner}:{head}."}
            raise ApiError(422, "Validation Failed", errors=[custom])
        if repo.branches[head] == repo.branches[base]:
            custom = {"resource": "PullRequest", "code": "custom", "message": f"No commits between {base} and {head}"}
            raise ApiError(422, "Validation Failed", errors=[custom])
        pull = Pull(
            number=max(repo.pulls, default=0) + 1, head=head, base=base, title=body.get("title", ""), body=body.get("body") or "",
            draft=bool(body.get("draft")), head_sha=repo.branches[head],
        )  # fmt: skip
        repo.pulls[pull.number] = pull
        self.record("pull.create", request, body)
        return web.json_response(self._pull_json(request, repo, pull), status=201)

    async def _get_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        return web.json_response(self._pull_json(request, repo, self._pull(repo, request)))

    async def _edit_pull(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        pull = self._pull(repo, request)
        body = await self.body(request)
        pull.title = body.get("title", pull.title)
        pull.body = body.get("body", pull.body)
        self.record("pull.update", request, body)
        return web.json_response(self._pull_json(request, repo, pull))
