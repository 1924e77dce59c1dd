"""The `mcpServers` file format MCP clients use (Claude Desktop, Cursor, VS Code): import, export.

    {"mcpServers": {"name": {"command": "npx", "args": [...], "env": {...}},
                    "other": {"url": "https://...", "headers": {...}, "type": "sse" | "http"}}}
"""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError

from metamcp.addresses import AddressPolicy
from metamcp.api.schemas import ServerInputSchema
from metamcp.errors import MetaMCPError, ValidationFailed
from metamcp.servers import DEFAULTS, ServerRegistry, check_address, check_server

#: `type` values clients write for each transport.
TYPES = {"sse": "sse", "http": "streamable_http", "streamable-http": "streamable_http",
         "streamable_http": "streamable_http", "stdio": "stdio"}
_ENTRY_KEYS = {"command", "args", "env", "cwd", "url", "headers", "type", "transport", "disabled",
               "description"}


def _fields(name: str, entry: Any, policy: AddressPolicy) -> dict[str, Any]:
    """The registry fields of one entry; ValueError with a reason when it cannot be one."""
    if not isinstance(entry, dict):
        raise ValueError("an entry must be an object")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise ValueError(f"unknown keys: {', '.join(unknown)}")
    kind = entry.get("type", entry.get("transport"))
    if kind is not None and kind not in TYPES:
        raise ValueError(f"type must be one of {', '.join(sorted(TYPES))}")
    if "command" in entry:
        transport = "stdio"
        fields = {k: entry[k] for k in ("command", "args", "env", "cwd") if k in entry}
    elif "url" in entry:
        transport = TYPES[kind] if kind else "streamable_http"
        fields = {k: entry[k] for k in ("url", "headers") if k in entry}
        headers = fields.get("headers")
        if isinstance(headers, dict):
            # "Authorization: Bearer X" is how clients write a token: keep it as bearer_token,
            # encrypted and masked like one (and a masked export imports back unchanged).
            for key in [k for k in headers if k.lower() == "authorization"]:
                value = headers[key]
                if isinstance(value, str) and value.startswith("Bearer "):
                    fields["headers"] = {k: v for k, v in headers.items() if k != key}
                    fields["bearer_token"] = value[len("Bearer "):]
    else:
        raise ValueError("an entry needs a command (stdio) or a url (http, sse)")
    if transport == "stdio" and "url" in entry:
        raise ValueError("an entry has either a command or a url, not both")
    fields.update(name=name, transport=transport, is_active=not entry.get("disabled", False))
    if "description" in entry:
        fields["description"] = entry["description"]
    try:
        loaded = ServerInputSchema().load(fields)
        check_server({**DEFAULTS, **loaded})
        check_address({**DEFAULTS, **loaded}, policy)
    except ValidationError as e:
        raise ValueError(_flatten(e.messages)) from None
    except ValidationFailed as e:
        raise ValueError(_flatten(e.details)) from None
    return loaded


def _flatten(messages: Any) -> str:
    if isinstance(messages, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in messages.items())
    if isinstance(messages, list):
        return " ".join(_flatten(m) for m in messages)
    return str(messages)


def import_servers(registry: ServerRegistry, document: Any, partial: bool = False,
                   partial_hint: str = "partial=true") -> dict[str, Any]:
    """Create or update the document's servers; a report of what happened to each.

    Every entry is checked first. Unless `partial`, one invalid entry rejects the whole
    document and nothing is written; the message names `partial_hint` as the way to import
    the valid ones (the REST parameter, or the CLI's flag).
    """
    if not isinstance(document, dict) or not isinstance(document.get("mcpServers"), dict):
        raise ValidationFailed("Send {\"mcpServers\": {\"name\": {...}}}, the format MCP clients use.")
    valid: dict[str, dict[str, Any]] = {}
    invalid: dict[str, str] = {}
    for name, entry in document["mcpServers"].items():
        try:
            valid[name] = _fields(name, entry, registry.policy)
            registry.check_stdio(valid[name])
        except ValueError as e:
            invalid[name] = str(e)
        except ValidationFailed as e:  # the stdio policy (METAMCP_STDIO, METAMCP_STDIO_COMMANDS)
            valid.pop(name, None)
            invalid[name] = e.message
    if invalid and not partial:
        raise ValidationFailed("Some entries are invalid; nothing was imported. Fix them, or import "
                               f"the valid ones with {partial_hint}.", invalid)
    existing = {server["name"]: server for server in registry.list_all()}
    report: dict[str, Any] = {"created": [], "updated": [], "skipped": [
        {"name": name, "reason": reason} for name, reason in invalid.items()]}
    for name, fields in valid.items():
        try:
            if name in existing:
                registry.replace(existing[name]["id"], fields)
                report["updated"].append(name)
            else:
                registry.create(fields)
                report["created"].append(name)
        except MetaMCPError as e:
            report["skipped"].append({"name": name, "reason": e.message})
    return report


def export_servers(registry: ServerRegistry, include_secrets: bool = False) -> dict[str, Any]:
    """Every registered server as a client config; secrets masked unless asked for.

    With `include_secrets`, a server whose secrets this ENCRYPTION_KEY cannot open is still
    exported, its secrets masked ("****", which an import reads as "keep the stored value"),
    and named in `unreadable` with a `warnings` line: the others' backup must not fail for it.
    """
    servers: dict[str, Any] = {}
    loaded = registry.load(active_only=False) if include_secrets else None
    configs = {config.name: config for config in loaded.configs} if loaded else {}
    unreadable = {problem.name: problem.message for problem in loaded.unreadable} if loaded else {}
    for public in registry.list_all():
        source = configs.get(public["name"]) if include_secrets else None
        entry: dict[str, Any]
        if public["transport"] == "stdio":
            entry = {"command": public["command"], "args": public["args"]}
            env = source.env if source else public["env"]
            if env:
                entry["env"] = env
            if public["cwd"]:
                entry["cwd"] = public["cwd"]
        else:
            headers = dict(source.headers if source else public["headers"])
            token = source.bearer_token if source else public["bearer_token"]
            if token:
                headers["Authorization"] = f"Bearer {token}"
            entry = {"type": "sse" if public["transport"] == "sse" else "http", "url": public["url"]}
            if headers:
                entry["headers"] = headers
        if public["description"]:
            entry["description"] = public["description"]
        if not public["is_active"]:
            entry["disabled"] = True
        servers[public["name"]] = entry
    exported: dict[str, Any] = {"mcpServers": servers}
    if unreadable:
        exported["unreadable"] = sorted(unreadable)
        exported["warnings"] = [unreadable[name] + " Its secrets are exported masked (****)."
                                for name in sorted(unreadable)]
    return exported
