"""A fake Azure DevOps Git REST 7.1 under ``/{ORG}``: the endpoints the adapters use, with ADO's shapes and errors.

A repository is ``project/repository``. Auth: Basic with an empty user and the
PAT as password; a wrong one gets 401, or with ``sign_in_page=True`` the 203
and HTML sign-in page ADO answers some clients. Every call must carry
``api-version`` (400 otherwise). A rate limit answers 429 with ``Retry-After``
and ``X-RateLimit-*``. Errors carry ADO's ``TFxxxxxx`` messages.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from tests.fakes.scm.model import Comment, Pull, Repo, Status, blob_sha
from tests.fakes.scm.server import ApiError, FakeScm, Throttling

ORG = "fakeorg"
ZERO = "0" * 40
_STATES = ("notSet", "pending", "succeeded", "failed", "error", "notApplicable")
_PR_STATES = {"open": "active", "merged": "completed", "closed": "abandoned"}


def _heads(name: str) -> str:
    return f"refs/heads/{name}"


class FakeAzureDevOps(FakeScm):
    provider = "ado"
    api_root = f"/{ORG}"

    def __init__(self, *args: Any, sign_in_page: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sign_in_page = sign_in_page

    def routes(self, app: web.Application) -> None:
        r = f"/{ORG}/{{project}}/_apis/git/repositories/{{repo}}"
        app.router.add_get(r, self._get_repo)
        app.router.add_get(r + "/pullRequests/{id:\\d+}/threads", self._list_threads)
        app.router.add_post(r + "/pullRequests/{id:\\d+}/threads", self._create_thread)
        app.router.add_patch(r + "/pullRequests/{id:\\d+}/threads/{thread:\\d+}/comments/{comment:\\d+}", self._edit_comment)
        app.router.add_post(r + "/pullRequests/{id:\\d+}/statuses", self._create_pr_status)
        app.router.add_post(r + "/commits/{sha}/statuses", self._create_commit_status)
        app.router.add_get(r + "/refs", self._list_refs)
        app.router.add_post(r + "/refs", self._update_refs)
        app.router.add_get(r + "/items", self._get_item)
        app.router.add_post(r + "/pushes", self._push)
        app.router.add_get(r + "/pullrequests", self._list_prs)
        app.router.add_post(r + "/pullrequests", self._create_pr)
        app.router.add_get(r + "/pullrequests/{id:\\d+}", self._get_pr)
        app.router.add_patch(r + "/pullrequests/{id:\\d+}", self._edit_pr)

    # --- the middleware's hooks ------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        expected = "Basic " + base64.b64encode(f":{self.token}".encode()).decode()
        return request.headers.get("Authorization") == expected

    def unauthorized(self) -> web.Response:
        if self.sign_in_page:
            return web.Response(
                status=203, text="<html><head><title>Azure DevOps Services | Sign In</title></head></html>", content_type="text/html"
            )
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="https://dev.azure.com/"'})

    def rate_limited(self, t: Throttling) -> web.Response:
        headers = {
            "X-RateLimit-Resource": "ATCPU", "X-RateLimit-Delay": "0.5", "X-RateLimit-Limit": "200",
            "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(self.reset_at())),
        }  # fmt: skip
        if t.retry_after is not None:
            headers["Retry-After"] = t.retry_after
        message = (
            "TF400733: The request has been canceled: Request was blocked due to exceeding usage of resource 'ATCPU' in namespace 'User'."
        )
        return web.json_response(self._error_body(message, "RequestBlockedException"), status=429, headers=headers)

    def error(self, exc: ApiError) -> web.Response:
        return web.json_response(self._error_body(str(exc.message), exc.extra.get("type_key", "GitException")), status=exc.status)

    @staticmethod
    def _error_body(message: str, type_key: str) -> dict[str, Any]:
        return {
            "$id": "1", "innerException": None, "message": message, "typeName": f"Microsoft.TeamFoundation.{type_key}",
            "typeKey": type_key, "errorCode": 0, "eventId": 3000,
        }  # fmt: skip

    def repo_missing(self, name: str) -> ApiError:
        return ApiError(
            404,
            f"TF401019: The Git repository with name or identifier {name.split('/')[-1]} does not exist"
            " or you do not have permissions for the operation you are attempting.",
        )

    # --- shapes ------------------------------------------------------------------------

    def _repo(self, request: web.Request) -> Repo:
        if "api-version" not in request.query:
            raise ApiError(
                400, f'No api-version was supplied for the "{request.method}" request.', type_key="VssVersionNotSpecifiedException"
            )
        return self.repo(f"{request.match_info['project']}/{request.match_info['repo']}")

    def _repo_json(self, request: web.Request, repo: Repo) -> dict[str, Any]:
        project, name = repo.name.split("/")
        return {
            "id": f"00000000-0000-0000-0000-{repo.id:012d}", "name": name,
            "url": f"{request.url.origin()}/{ORG}/{project}/_apis/git/repositories/{name}",
            "project": {"id": f"11111111-0000-0000-0000-{repo.id:012d}", "name": project, "state": "wellFormed"},
            "defaultBranch": _heads(repo.default_branch), "webUrl": f"https://dev.azure.com/{ORG}/{project}/_git/{name}",
        }  # fmt: skip

    def _pr_json(self, request: web.Request, repo: Repo, pr: Pull) -> dict[str, Any]:
        return {
            "repository": self._repo_json(request, repo), "pullRequestId": pr.number, "codeReviewId": pr.number,
            "status": _PR_STATES[pr.state], "createdBy": {"displayName": "Sluicegate Bot"}, "title": pr.title,
            "description": pr.body, "sourceRefName": _heads(pr.head), "targetRefName": _heads(pr.base), "mergeStatus": "queued",
            "isDraft": pr.draft, "lastMergeSourceCommit": {"commitId": repo.branches.get(pr.head, pr.head_sha)},
            "reviewers": [], "supportsIterations": True,
        }  # fmt: skip

    def _thread_json(self, thread_id: int, comments: list[Comment]) -> dict[str, Any]:
        return {
            "id": thread_id, "status": "active", "isDeleted": False, "properties": {}, "threadContext": None,
            "comments": [self._comment_json(i + 1, c) for i, c in enumerate(comments)],
        }  # fmt: skip

    @staticmethod
    def _comment_json(comment_id: int, comment: Comment) -> dict[str, Any]:
        return {
            "id": comment_id, "parentCommentId": 0, "author": {"displayName": comment.author}, "content": comment.body,
            "commentType": "text", "isDeleted": False, "usersLiked": [],
        }  # fmt: skip

    def _pr(self, repo: Repo, request: web.Request) -> Pull:
        pr = repo.pulls.get(int(request.match_info["id"]))
        if pr is None:
            raise ApiError(404, "TF401180: The requested pull request was not found.")
        return pr

    @staticmethod
    def _threads(pr: Pull) -> dict[int, list[Comment]]:
        threads: dict[int, list[Comment]] = {}
        for comment in pr.comments:
            threads.setdefault(comment.thread, []).append(comment)
        return threads

    # --- routes --------------------------------------------------------------------------

    async def _get_repo(self, request: web.Request) -> web.Response:
        return web.json_response(self._repo_json(request, self._repo(request)))

    async def _list_threads(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        threads = [self._thread_json(t, cs) for t, cs in self._threads(self._pr(repo, request)).items()]
        return web.json_response({"value": threads, "count": len(threads)})

    async def _create_thread(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        pr = self._pr(repo, request)
        body = await self.body(request)
        comments = body.get("comments") or []
        if not comments or not comments[0].get("content"):
            raise ApiError(400, "The thread must contain at least one comment.")
        thread_id = self.next_id()
        pr.comments.extend(Comment(id=self.next_id(), body=c["content"], thread=thread_id) for c in comments)
        self.record("comment.create", request, body)
        return web.json_response(self._thread_json(thread_id, self._threads(pr)[thread_id]))

    async def _edit_comment(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        pr = self._pr(repo, request)
        comments = self._threads(pr).get(int(request.match_info["thread"]), [])
        index = int(request.match_info["comment"]) - 1
        if not 0 <= index < len(comments):
            raise ApiError(404, "TF401181: The requested pull request comment was not found.")
        body = await self.body(request)
        comments[index].body = body["content"]
        self.record("comment.update", request, body)
        return web.json_response(self._comment_json(index + 1, comments[index]))

    async def _status(self, request: web.Request, repo: Repo, sha: str, pull: int | None) -> dict[str, Any]:
        body = await self.body(request)
        context = body.get("context") or {}
        if body.get("state") not in _STATES or not context.get("name"):
            raise ApiError(400, "The status state and context name are required.")
        status = Status(
            id=self.next_id(), sha=sha, context=f"{context.get('genre') or ''}/{context['name']}".lstrip("/"),
            state=body["state"], description=body.get("description") or "", target_url=body.get("targetUrl"), pull=pull,
        )  # fmt: skip
        repo.statuses.append(status)
        self.record("status.create", request, body)
        return {
            "id": status.id, "state": status.state, "description": status.description, "context": context,
            "createdBy": {"displayName": "Sluicegate Bot"}, "targetUrl": status.target_url,
        }  # fmt: skip

    async def _create_pr_status(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        pr = self._pr(repo, request)
        return web.json_response(await self._status(request, repo, repo.branches.get(pr.head, pr.head_sha), pr.number))

    async def _create_commit_status(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        sha = request.match_info["sha"]
        if sha not in repo.commits:
            raise ApiError(404, f"TF401175: The version descriptor <Commit: {sha}> could not be resolved to a version in the repository.")
        return web.json_response(await self._status(request, repo, sha, None), status=201)

    async def _list_refs(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        prefix = "refs/" + request.query.get("filter", "")
        refs = [
            {"name": _heads(b), "objectId": sha, "creator": {"displayName": "Sluicegate Bot"}}
            for b, sha in sorted(repo.branches.items()) if _heads(b).startswith(prefix)
        ]  # fmt: skip
        return web.json_response({"value": refs, "count": len(refs)})

    async def _update_refs(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        results = []
        for update in await self.body(request):
            name, old, new = update["name"].removeprefix("refs/heads/"), update["oldObjectId"], update["newObjectId"]
            current = repo.branches.get(name, ZERO)
            ok = current == old and (new == ZERO or new in repo.commits)
            status = "succeeded" if ok else "staleOldObjectId"
            if ok and new == ZERO:
                repo.branches.pop(name, None)
                if current == ZERO:
                    status = "succeededNonExistentRef"
            elif ok:
                repo.branches[name] = new
            if ok:
                self.record("branch.delete" if new == ZERO else "branch.create", request, update)
            results.append({
                "repositoryId": str(repo.id), "name": update["name"], "oldObjectId": old, "newObjectId": new,
                "isLocked": False, "updateStatus": status, "success": ok, "customMessage": None,
            })  # fmt: skip
        return web.json_response({"value": results, "count": len(results)})

    async def _get_item(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        path = request.query.get("path", "")
        version = request.query.get("versionDescriptor.version", repo.default_branch)
        head = repo.head(version)
        if head is None:
            raise ApiError(
                404,
                f"TF401175: The version descriptor <Branch: {version}> could not be resolved to a version in the repository {repo.name}.",
            )
        data = head.files.get(path.lstrip("/"))
        if data is None:
            raise ApiError(
                404,
                f"TF401174: The item '{path}' could not be found in the repository '{repo.name}'"
                f" at the version specified by '<Branch: {version} >'.",
            )
        return web.json_response({"objectId": blob_sha(data), "gitObjectType": "blob", "commitId": head.sha, "path": path})

    async def _push(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        body = await self.body(request)
        ref = body["refUpdates"][0]
        branch = ref["name"].removeprefix("refs/heads/")
        if repo.branches.get(branch, ZERO) != ref["oldObjectId"]:
            raise ApiError(
                409,
                f"TF401028: The reference '{ref['name']}' has already been updated by another client,"
                " so you cannot update it. Please try again.",
            )
        head = repo.head(branch)
        files = head.files if head else {}
        changes: dict[str, bytes] = {}
        commit = body["commits"][0]
        for change in commit["changes"]:
            path = change["item"]["path"].lstrip("/")
            kind = change["changeType"]
            if kind == "add" and path in files:
                raise ApiError(400, f"The path '/{path}' specified in the add operation already exists. Please specify a new path.")
            if kind == "edit" and path not in files:
                raise ApiError(400, f"TF401174: The item '/{path}' could not be found in the repository.")
            content = change["newContent"]
            try:
                data = (
                    base64.b64decode(content["content"], validate=True)
                    if content.get("contentType") == "base64encoded"
                    else content["content"].encode()
                )
            except binascii.Error:
                raise ApiError(400, "The content is not valid base64.") from None
            changes[path] = data
        made = repo.commit(branch, changes, commit["comment"])
        self.record("commit.create", request, body)
        return web.json_response({
            "commits": [{"commitId": made.sha, "comment": made.message}], "pushId": self.next_id(),
            "refUpdates": [{"repositoryId": str(repo.id), "name": ref["name"], "oldObjectId": ref["oldObjectId"], "newObjectId": made.sha}],
            "repository": self._repo_json(request, repo), "pushedBy": {"displayName": "Sluicegate Bot"},
        }, status=201)  # fmt: skip

    async def _list_prs(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        source = request.query.get("searchCriteria.sourceRefName")
        status = request.query.get("searchCriteria.status", "active")
        found = [
            self._pr_json(request, repo, p) for p in sorted(repo.pulls.values(), key=lambda p: -p.number)
            if (status == "all" or _PR_STATES[p.state] == status) and (source is None or _heads(p.head) == source)
        ]  # fmt: skip
        return web.json_response({"value": found, "count": len(found)})

    async def _create_pr(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        body = await self.body(request)
        source = body.get("sourceRefName", "").removeprefix("refs/heads/")
        target = body.get("targetRefName", "").removeprefix("refs/heads/")
        if source not in repo.branches or target not in repo.branches:
            raise ApiError(
                400,
                "TF401398: The pull request cannot be activated because the source and/or the target branch"
                " no longer exists, or the requested refs are not branches",
            )
        if repo.open_pull(source, target) is not None:
            raise ApiError(
                409,
                "TF401179: An active pull request for the source and target branch already exists.",
                type_key="GitPullRequestExistsException",
            )
        pr = Pull(
            number=max(repo.pulls, default=0) + 1, head=source, base=target, title=body.get("title", ""),
            body=body.get("description") or "", draft=bool(body.get("isDraft")), head_sha=repo.branches[source],
            work_items=[w["id"] for w in body.get("workItemRefs") or []],
        )  # fmt: skip
        repo.pulls[pr.number] = pr
        self.record("pull.create", request, body)
        return web.json_response(self._pr_json(request, repo, pr), status=201)

    async def _get_pr(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        return web.json_response(self._pr_json(request, repo, self._pr(repo, request)))

    async def _edit_pr(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        pr = self._pr(repo, request)
        body = await self.body(request)
        pr.title = body.get("title", pr.title)
        pr.body = body.get("description", pr.body)
        self.record("pull.update", request, body)
        return web.json_response(self._pr_json(request, repo, pr))
