"""Stdio children never outlive their worker, even one killed with SIGKILL.

Two guards. Every Popen of a process runs on one long-lived spawner thread, and the child arms
PR_SET_PDEATHSIG before exec: the kernel sends it SIGKILL when the thread that forked it exits,
which (the thread living as long as the process) means when the worker dies. The child's own
children (npx -> node) do not inherit that, but they live in its process group, which is recorded
as a file under the data directory (run/stdio/<worker pid>/<group id>); gunicorn's master kills
the recorded groups of a worker that exited (gunicorn_conf.child_exit). A normal stop removes
its record.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: From <linux/prctl.h>.
PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def run_dir(data_dir: Path) -> Path:
    """Where the process groups of each worker's stdio children are recorded."""
    return data_dir / "run" / "stdio"


def _die_with(parent: int) -> Callable[[], None]:
    """preexec_fn: arm the death signal, then make sure the parent did not die before that."""
    prctl = _PRCTL

    def preexec() -> None:
        # Runs in the forked child before exec: no imports, no locks, nothing but two calls.
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(70)

    return preexec


class Spawner:
    """The thread that forks every stdio child of this process (see the module docstring)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._requests: queue.SimpleQueue[tuple[Sequence[str], dict[str, Any],
                                                Future[subprocess.Popen[bytes]]]] = queue.SimpleQueue()
        # Never stopped: its exit would SIGKILL every child it started.
        threading.Thread(target=self._serve, name="metamcp-spawner", daemon=True).start()

    def popen(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        future: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((args, kwargs, future))
        return future.result()

    def _serve(self) -> None:
        while True:
            args, kwargs, future = self._requests.get()
            try:
                process = subprocess.Popen(args, preexec_fn=_die_with(self.pid), **kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller, who raises it
                future.set_exception(e)
            else:
                future.set_result(process)


_spawner: Spawner | None = None
_spawner_lock = threading.Lock()


def spawn(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen on this process's spawner thread; the child dies with the process."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner.pid != os.getpid():  # a forked process needs its own
            _spawner = Spawner()
        spawner = _spawner
    return spawner.popen(args, **kwargs)


class ChildRecords:
    """The process groups of this worker's running children, as files for the master to read."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._warned = False

    def add(self, group: int) -> None:
        folder = self._directory / str(os.getpid())
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(group)).touch()
        except OSError as e:
            if not self._warned:  # the death signal still guards the child itself
                self._warned = True
                logger.warning("cannot record stdio children under %s (%s); a killed worker may "
                               "leave their own children behind", self._directory, e.strerror)

    def remove(self, group: int) -> None:
        try:
            (self._directory / str(os.getpid()) / str(group)).unlink()
        except OSError:
            pass


def reap_worker(directory: Path, worker_pid: int) -> int:
    """In the master, once `worker_pid` exited: SIGKILL the groups it recorded, forget them.
    Returns how many groups still had processes."""
    folder = directory / str(worker_pid)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    killed = 0
    for entry in entries:
        if entry.name.isdigit():
            try:
                # Still safe from reuse: a group id stays taken while any member lives.
                os.killpg(int(entry.name), signal.SIGKILL)
                killed += 1
            except OSError:
                pass  # the group is gone already
        try:
            entry.unlink()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass
    return killed


def forget_dead_workers(directory: Path) -> int:
    """At start: drop the records of workers no longer alive (a crashed gateway's). Their groups
    are not killed: after so long a group id may have been reused by an unrelated process."""
    try:
        folders = [f for f in directory.iterdir() if f.name.isdigit()]
    except OSError:
        return 0
    forgotten = 0
    for folder in folders:
        try:
            os.kill(int(folder.name), 0)
            continue  # alive (another gateway on this data directory)
        except PermissionError:
            continue
        except OSError:
            pass
        try:
            for entry in folder.iterdir():
                entry.unlink(missing_ok=True)
                forgotten += 1
            folder.rmdir()
        except OSError:
            continue
    return forgotten
