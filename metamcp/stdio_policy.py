"""Which commands stdio servers may run: METAMCP_STDIO (on/off) and the METAMCP_STDIO_COMMANDS
allow-list, checked at registration and again before every start of a child.

An entry of the allow-list is an absolute path or a bare name looked up on the PATH children
inherit. A server's command is resolved exactly as the child would be started (relative to its
`cwd`, bare names on the child's own PATH, `..` and symlinks followed), and the two are compared
as real files. With an allow-list the start runs the very file that was checked, so neither
`./sh`, `/bin/../bin/sh` nor a PATH set in the server's env can slip another program in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from metamcp.config import Settings, child_environment
from metamcp.errors import ValidationFailed

#: Environment variables that make the dynamic loader run code of the caller's choosing inside
#: any program; with an allow-list they would turn an allowed executable into any other.
LOADER_VARIABLES = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT")


class StdioRefused(ValidationFailed):
    """A stdio server this gateway's policy does not allow (422 at registration)."""

    code = "stdio_refused"


def resolve(command: str, cwd: str | None, path: str | None) -> str | None:
    """The absolute path the child would execute (as subprocess does), or None if not found."""
    base = os.path.abspath(cwd) if cwd else os.getcwd()
    if "/" in command:
        candidates = [os.path.join(base, command)]
    else:
        # Relative PATH entries (and the empty one) mean the child's cwd, not ours.
        directories = (path if path is not None else os.defpath).split(os.pathsep)
        candidates = [os.path.join(base, directory, command) for directory in directories]
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True)
class StdioPolicy:
    enabled: bool = True
    #: None: any command; else the executables allowed (absolute paths or bare names).
    commands: tuple[str, ...] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> StdioPolicy:
        return cls(settings.stdio_enabled, settings.stdio_commands)

    def executable(self, command: str, cwd: str | None, env: Mapping[str, str]) -> str | None:
        """The file to execute for this command (None: let the start resolve it, as without a
        policy); raises StdioRefused naming the setting that refuses it."""
        if not self.enabled:
            raise StdioRefused("Stdio servers are switched off on this gateway (METAMCP_STDIO=off).",
                               {"transport": ["stdio is not allowed (METAMCP_STDIO=off)."]})
        if self.commands is None:
            return None
        loader = sorted(name for name in env if name in LOADER_VARIABLES)
        if loader:
            raise StdioRefused(f"With METAMCP_STDIO_COMMANDS set, a stdio server may not set {', '.join(loader)}.",
                               {"env": [f"{name} is not allowed." for name in loader]})
        found = resolve(command, cwd, child_environment(env).get("PATH"))
        if found is None:
            raise StdioRefused(f"The command {command!r} cannot be found, so METAMCP_STDIO_COMMANDS "
                               "cannot allow it.", {"command": ["Not found."]})
        if os.path.realpath(found) not in self._allowed():
            raise StdioRefused(f"The command {command!r} (the file {os.path.realpath(found)}) is not "
                               "allowed by METAMCP_STDIO_COMMANDS.",
                               {"command": ["Not among METAMCP_STDIO_COMMANDS."]})
        return found

    def _allowed(self) -> set[str]:
        # Resolved on each check, not once: a package upgrade may move what a name points to.
        inherited = child_environment({}).get("PATH")
        allowed = set()
        for entry in self.commands or ():
            found = entry if entry.startswith("/") else resolve(entry, "/", inherited)
            if found is not None:
                allowed.add(os.path.realpath(found))
        return allowed
