"""MetaMCP: one authenticated MCP endpoint in front of many upstream MCP servers."""

from metamcp.app import create_app

__all__ = ["create_app"]
