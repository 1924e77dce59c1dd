"""Clients of upstream MCP servers: one interface (interface.py), one client per transport."""
