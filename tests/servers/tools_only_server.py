"""A minimal stdio MCP server that offers tools only (declares no prompts or resources).

Hand-written on purpose: SDK servers declare every capability, real servers often do not.
"""

from __future__ import annotations

import json
import sys

#: With --deep, the `deep` tool answers a result nested `levels` arrays deep, written by hand
#: (json.dumps cannot write it past Python's recursion limit).
DEEP = "--deep" in sys.argv

TOOLS = [{"name": "shout", "description": "Upper-case text.",
          "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}}}]


def answer(message: dict) -> dict | None:
    method, request_id = message.get("method"), message.get("id")
    if request_id is None:
        return None  # a notification
    if method == "initialize":
        result = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "tools-only", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": message["params"]["arguments"]["text"].upper()}]}
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "Method not found"}}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def deep_reply(message: dict) -> str | None:
    if not (DEEP and message.get("method") == "tools/call" and message["params"]["name"] == "deep"):
        return None
    levels = message["params"]["arguments"]["levels"]
    return (json.dumps({"jsonrpc": "2.0", "id": message["id"]})[:-1] + ', "result": {"content": [], '
            '"structuredContent": {"value": ' + "[" * levels + "]" * levels + "}}}")


def main() -> None:
    for line in sys.stdin:
        message = json.loads(line)
        deep = deep_reply(message)
        if deep is not None:
            sys.stdout.write(deep + "\n")
            sys.stdout.flush()
            continue
        reply = answer(message)
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
