"""Sluicegate's MCP gateway plugin: upstream MCP servers multiplexed behind one governed ``/mcp`` endpoint."""

from __future__ import annotations

from sluicegate_mcp.plugin import McpPlugin

__all__ = ["McpPlugin"]
