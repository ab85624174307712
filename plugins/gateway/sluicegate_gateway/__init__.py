"""Sluicegate's SCM gateway plugin: signed webhooks from GitHub, GitLab and Azure DevOps, and a task API.

- ``plugin.GatewayPlugin``: the ``gateway`` entry point (routes under
  ``/webhooks`` and ``/api/v1/tasks``).
- ``options``: its configuration; ``signatures``: each provider's proof;
  ``events``: payloads --> ``WorkItem``; ``dedup``: delivery ids in Redis;
  ``webhooks`` and ``tasks_api``: the two route groups.
"""

from __future__ import annotations

from sluicegate_gateway.events import WorkItem
from sluicegate_gateway.options import EventRule, Options, Repository
from sluicegate_gateway.plugin import GatewayPlugin

__all__ = ["EventRule", "GatewayPlugin", "Options", "Repository", "WorkItem"]
