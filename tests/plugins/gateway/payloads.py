"""Webhook payloads shaped as each provider sends them (trimmed of fields nothing reads), and how to sign them."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

HEAD_SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"


def github_pull_request(repo: str = "acme/api", action: str = "opened", number: int = 42) -> dict[str, Any]:
    owner = repo.split("/")[0]
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "url": f"https://api.github.com/repos/{repo}/pulls/{number}",
            "id": 1,
            "html_url": f"https://github.com/{repo}/pull/{number}",
            "number": number,
            "state": "open",
            "locked": False,
            "title": "Add retry budget to the client",
            "user": {"login": "octocat", "id": 1, "type": "User"},
            "body": "Fixes #12.\n\nAdds a retry budget.",
            "labels": [{"id": 208045946, "name": "enhancement", "color": "a2eeef", "default": True}],
            "draft": False,
            "head": {"label": f"{owner}:retry-budget", "ref": "retry-budget", "sha": HEAD_SHA, "repo": {"full_name": repo}},
            "base": {
                "label": f"{owner}:main",
                "ref": "main",
                "sha": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
                "repo": {"full_name": repo},
            },
            "merged": False,
            "commits": 1,
        },
        "repository": {"id": 1296269, "name": repo.split("/")[1], "full_name": repo, "private": False, "owner": {"login": owner}},
        "sender": {"login": "octocat", "id": 1, "type": "User"},
    }


def github_issue_labeled(repo: str = "acme/api", label: str = "sluicegate", number: int = 7) -> dict[str, Any]:
    return {
        "action": "labeled",
        "issue": {
            "url": f"https://api.github.com/repos/{repo}/issues/{number}",
            "html_url": f"https://github.com/{repo}/issues/{number}",
            "id": 444500041,
            "number": number,
            "title": "Timeouts are not retried",
            "user": {"login": "octocat", "id": 1},
            "labels": [{"id": 1362934389, "name": "bug"}, {"id": 1362934390, "name": label}],
            "state": "open",
            "body": None,
        },
        "label": {"id": 1362934390, "name": label, "color": "d73a4a"},
        "repository": {"id": 186853002, "name": repo.split("/")[1], "full_name": repo},
        "sender": {"login": "octocat", "id": 1},
    }


def gitlab_merge_request(path: str = "acme/platform/api", action: str = "open", iid: int = 5) -> dict[str, Any]:
    return {
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": {"id": 1, "name": "Administrator", "username": "root"},
        "project": {"id": 1, "name": path.rsplit("/", 1)[1], "path_with_namespace": path, "default_branch": "main"},
        "object_attributes": {
            "id": 99,
            "iid": iid,
            "target_branch": "main",
            "source_branch": "ms-viewport",
            "title": "MS-Viewport",
            "description": "Makes the viewport responsive",
            "state": "opened",
            "action": action,
            "url": f"https://gitlab.example.com/{path}/-/merge_requests/{iid}",
            "last_commit": {"id": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", "message": "fixed readme"},
        },
        "labels": [{"id": 206, "title": "API", "color": "#ffffff"}],
        "changes": {},
        "repository": {"name": path.rsplit("/", 1)[1], "url": f"git@gitlab.example.com:{path}.git"},
    }


def gitlab_issue(path: str = "acme/platform/api", label: str = "sluicegate", *, before: tuple[str, ...] = ()) -> dict[str, Any]:
    after = [*before, label]
    return {
        "object_kind": "issue",
        "event_type": "issue",
        "user": {"id": 1, "name": "Administrator", "username": "root"},
        "project": {"id": 1, "name": path.rsplit("/", 1)[1], "path_with_namespace": path},
        "object_attributes": {
            "id": 301,
            "iid": 23,
            "title": "New API: create/update/delete file",
            "description": "Create new API for manipulations with repository",
            "state": "opened",
            "action": "update",
            "url": f"https://gitlab.example.com/{path}/-/issues/23",
        },
        "labels": [{"id": i, "title": t} for i, t in enumerate(after)],
        "changes": {
            "labels": {
                "previous": [{"id": i, "title": t} for i, t in enumerate(before)],
                "current": [{"id": i, "title": t} for i, t in enumerate(after)],
            }
        },
    }


def ado_pull_request(
    org: str = "fabrikam", project: str = "Payments", repo: str = "api", event: str = "git.pullrequest.created"
) -> dict[str, Any]:
    base = f"https://dev.azure.com/{org}/"
    return {
        "subscriptionId": "00000000-0000-0000-0000-000000000000",
        "notificationId": 3,
        "id": "2ab4e3d3-b7a6-425e-92b1-5a9982c1269e",
        "eventType": event,
        "publisherId": "tfs",
        "message": {"text": "Jamal Hartnett created a new pull request"},
        "resource": {
            "repository": {
                "id": "4bc14d40-c903-45e2-872e-0462c7748079",
                "name": repo,
                "url": f"{base}_apis/git/repositories/4bc14d40-c903-45e2-872e-0462c7748079",
                "project": {"id": "6ce954b1-ce1f-45d1-b94d-e6bf2464ba2c", "name": project, "state": "wellFormed"},
                "remoteUrl": f"{base}{project}/_git/{repo}",
            },
            "pullRequestId": 1,
            "status": "active",
            "createdBy": {"displayName": "Jamal Hartnett", "uniqueName": "fabrikamfiber4@hotmail.com"},
            "creationDate": "2014-06-17T16:55:46.589889Z",
            "title": "my first pull request",
            "description": " - test2\r\n",
            "sourceRefName": "refs/heads/mytopic",
            "targetRefName": "refs/heads/master",
            "mergeStatus": "succeeded",
            "lastMergeSourceCommit": {"commitId": "53d54ac915144006c2c9e90d2c7d3880920db49c"},
            "lastMergeTargetCommit": {"commitId": "a511f535b1ea495ee0c903badb68fbc83772c882"},
            "_links": {"web": {"href": f"{base}{project}/_git/{repo}/pullrequest/1"}},
        },
        "resourceVersion": "1.0",
        "resourceContainers": {
            "collection": {"id": "c12d0eb8"},
            "account": {"id": "f844ec47", "baseUrl": base},
            "project": {"id": "be9b3917"},
        },
        "createdDate": "2014-06-17T16:55:46.589889Z",
    }


def ado_workitem_tagged(org: str = "fabrikam", project: str = "Payments", tag: str = "sluicegate") -> dict[str, Any]:
    return {
        "subscriptionId": "00000000-0000-0000-0000-000000000000",
        "notificationId": 4,
        "id": "27646e0e-b520-4d2b-9411-bba7524947cd",
        "eventType": "workitem.updated",
        "publisherId": "tfs",
        "resource": {
            "id": 2,
            "workItemId": 5,
            "rev": 2,
            "fields": {
                "System.Rev": {"oldValue": 1, "newValue": 2},
                "System.Tags": {"oldValue": "triage", "newValue": f"triage; {tag}"},
            },
            "_links": {"html": {"href": f"https://dev.azure.com/{org}/{project}/_workitems/edit/5"}},
            "url": f"https://dev.azure.com/{org}/_apis/wit/workItems/5/updates/2",
            "revision": {
                "id": 5,
                "rev": 2,
                "fields": {
                    "System.AreaPath": project,
                    "System.TeamProject": project,
                    "System.WorkItemType": "Bug",
                    "System.State": "New",
                    "System.Title": "Some great new idea!",
                    "System.Description": "<div>Crashes on save</div>",
                    "System.ChangedBy": "Jamal Hartnett <fabrikamfiber4@hotmail.com>",
                    "System.Tags": f"triage; {tag}",
                },
            },
        },
        "resourceContainers": {"account": {"id": "f844ec47", "baseUrl": f"https://dev.azure.com/{org}/"}},
        "createdDate": "2014-06-17T16:55:46.589889Z",
    }


def github_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
