"""MCP: the Streamable HTTP endpoint, the aggregating gateway and the upstream clients."""
