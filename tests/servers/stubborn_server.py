"""A stdio MCP server that is hard to get rid of: it ignores SIGTERM and the end of its input,
and runs a grandchild (in its process group) that ignores SIGTERM too.

Its one tool, `pids`, answers {"pid", "ppid", "grandchild"} so a test can find the worker that
runs it (the parent) and watch both processes. Extra arguments (a marker) are ignored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

GRANDCHILD = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"


def answer(message: dict, grandchild: int) -> dict | None:
    method, request_id = message.get("method"), message.get("id")
    if request_id is None:
        return None  # a notification
    if method == "initialize":
        result = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "stubborn", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "pids", "description": "Process ids of this server.",
                             "inputSchema": {"type": "object"}}]}
    elif method == "tools/call":
        pids = {"pid": os.getpid(), "ppid": os.getppid(), "grandchild": grandchild}
        result = {"content": [{"type": "text", "text": json.dumps(pids)}]}
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "Method not found"}}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def main() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c", GRANDCHILD, *sys.argv[1:]],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
    for line in sys.stdin:
        if not line.strip():
            continue
        reply = answer(json.loads(line), grandchild.pid)
        if reply is not None:
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    while True:  # end of input: stay anyway
        time.sleep(3600)


if __name__ == "__main__":
    main()
