"""MetaMCP: one authenticated MCP endpoint in front of many upstream MCP servers.

Empty on purpose: importing a submodule (say metamcp.mcp.naming) loads nothing else; the app
factory is metamcp.app.create_app.
"""
