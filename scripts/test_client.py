#!/usr/bin/env python3
"""End-to-end smoke test of a running gateway: health, token, servers, and one MCP session.

    .venv/bin/python scripts/test_client.py --api-key mcp_...   (or METAMCP_API_KEY)
    .venv/bin/python scripts/test_client.py --endpoint NAME [--api-key mcp_...]

With --endpoint the MCP session is opened at /metamcp/NAME/mcp (the key may be omitted for a
public endpoint, and may be limited to the endpoint's namespace), and the endpoint's OpenAPI
document is fetched instead of the admin server list.

The gateway's URL: --url, else METAMCP_URL, else http://127.0.0.1:METAMCP_PORT (12009 when
unset); settings come from the environment, then the checkout's `.env` (as `make run` reads it).

Prints each step (a failed HTTP step shows the server's message); exits 0 when every step
passed, 1 at the first failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import requests

from metamcp.config import read_env_file

#: The checkout this script belongs to: its `.env` is the one `make run` reads.
ROOT = Path(__file__).resolve().parent.parent

PROTOCOL_VERSION = "2025-11-25"


class StepFailed(Exception):
    pass


def step(title: str, ok: bool, detail: str) -> None:
    print(f"[{'ok' if ok else 'FAIL'}] {title}: {detail}")
    if not ok:
        raise StepFailed(title)


def http_failure(response: requests.Response) -> str:
    """A failed step's detail, `HTTP 401: <the server's message>` (from a REST error body, a
    JSON-RPC error, or the text), so the user sees why without repeating the request."""
    try:
        body = response.json()
    except ValueError:
        message = response.text.strip()[:200]
    else:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and error.get("message"):
            message = str(error["message"])
        elif isinstance(body, dict) and body.get("message"):
            message = str(body["message"])
        else:
            message = json.dumps(body)[:200]
    return f"HTTP {response.status_code}: {message}" if message else f"HTTP {response.status_code}"


def read_reply(response: requests.Response) -> dict[str, Any]:
    """The JSON-RPC response of a POST, whether sent as JSON or as an SSE stream."""
    if response.headers.get("Content-Type", "").startswith("text/event-stream"):
        for line in response.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                message = json.loads(line[5:].strip())
                if "method" not in message:
                    return message
        raise StepFailed("the SSE stream ended without a response")
    return response.json()


def run(base: str, api_key: str | None, timeout: float, endpoint: str | None = None) -> None:
    http = requests.Session()
    health = http.get(f"{base}/health", timeout=timeout)
    step("health", health.status_code == 200, health.text.strip()[:200])

    key_header = {"X-API-Key": api_key} if api_key else {}
    if api_key:
        token = http.post(f"{base}/api/v1/auth/token", json={"api_key": api_key}, timeout=timeout)
        step("token", token.status_code == 200,
             f"HTTP {token.status_code}" if token.status_code == 200 else http_failure(token))
    if endpoint is None:
        auth = {"Authorization": f"Bearer {token.json()['access_token']}"}
        servers = http.get(f"{base}/api/v1/mcp/servers", headers=auth, timeout=timeout)
        names = [s["name"] for s in servers.json().get("servers", [])] if servers.ok else []
        step("list servers", servers.ok, (", ".join(names) or "(none registered)") if servers.ok
             else http_failure(servers))
        mcp_url = f"{base}/mcp"
    else:
        spec = http.get(f"{base}/metamcp/{endpoint}/api/openapi.json", headers=key_header, timeout=timeout)
        paths = list(spec.json().get("paths", {})) if spec.ok else []
        step(f"endpoint {endpoint} OpenAPI", spec.ok,
             f"HTTP {spec.status_code}, {len(paths)} tool paths" if spec.ok else http_failure(spec))
        mcp_url = f"{base}/metamcp/{endpoint}/mcp"

    mcp_headers = {**key_header, "Accept": "application/json, text/event-stream",
                   "Content-Type": "application/json"}
    init = http.post(mcp_url, headers=mcp_headers, timeout=timeout, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                   "clientInfo": {"name": "metamcp-test-client", "version": "1"}}})
    session_id = init.headers.get("Mcp-Session-Id", "")
    result = read_reply(init).get("result", {}) if init.ok else {}
    step("initialize", bool(session_id) and "protocolVersion" in result,
         f"protocol {result.get('protocolVersion')}, session {session_id[:8]}..." if init.ok
         else http_failure(init))
    mcp_headers.update({"Mcp-Session-Id": session_id, "MCP-Protocol-Version": result["protocolVersion"]})
    http.post(mcp_url, headers=mcp_headers, timeout=timeout,
              json={"jsonrpc": "2.0", "method": "notifications/initialized"})

    tools: list[dict[str, Any]] = []
    cursor = None
    for page in range(100):
        params: dict[str, Any] = {"cursor": cursor} if cursor else {}
        reply = read_reply(http.post(mcp_url, headers=mcp_headers, timeout=timeout, json={
            "jsonrpc": "2.0", "id": 2 + page, "method": "tools/list", "params": params}))
        tools += reply.get("result", {}).get("tools", [])
        cursor = reply.get("result", {}).get("nextCursor")
        if not cursor:
            break
    step("tools/list", True, f"{len(tools)} tools: {', '.join(t['name'] for t in tools[:8])}"
         + (" ..." if len(tools) > 8 else ""))
    if not tools:
        print("no tools to call: register a server first (see README)")
        return

    tool = next((t for t in tools if t["name"].endswith("__echo")), tools[0])
    arguments = {"message": "hello from test_client"} if tool["name"].endswith("__echo") else {}
    reply = read_reply(http.post(mcp_url, headers=mcp_headers, timeout=timeout, json={
        "jsonrpc": "2.0", "id": 200, "method": "tools/call",
        "params": {"name": tool["name"], "arguments": arguments}}))
    call = reply.get("result")
    step(f"tools/call {tool['name']}", call is not None,
         json.dumps(call if call is not None else reply.get("error"))[:300])
    http.delete(mcp_url, headers=mcp_headers, timeout=timeout)


def default_url(settings: dict[str, str]) -> str:
    """METAMCP_URL, else the local gateway on METAMCP_PORT (the port `make run` listens on)."""
    return settings.get("METAMCP_URL") or f"http://127.0.0.1:{settings.get('METAMCP_PORT') or 12009}"


def main() -> int:
    settings = {**read_env_file(ROOT / ".env"), **os.environ}
    parser = argparse.ArgumentParser(description="Smoke-test a running MetaMCP gateway.")
    parser.add_argument("--api-key", default=settings.get("METAMCP_API_KEY"),
                        help="an API key (default: $METAMCP_API_KEY)")
    parser.add_argument("--url", default=default_url(settings),
                        help="the gateway's base URL (default: $METAMCP_URL, else http://127.0.0.1:$METAMCP_PORT; "
                             "now %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request")
    parser.add_argument("--endpoint", metavar="NAME", help="test the endpoint /metamcp/NAME instead of /mcp")
    args = parser.parse_args()
    if not args.api_key and not args.endpoint:
        parser.error("an API key is required: --api-key or METAMCP_API_KEY")
    try:
        run(args.url.rstrip("/"), args.api_key, args.timeout, args.endpoint)
    except StepFailed as e:
        print(f"failed at: {e}", file=sys.stderr)
        return 1
    except requests.RequestException as e:
        print(f"cannot reach {args.url}: {type(e).__name__}", file=sys.stderr)
        return 1
    print("all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
