"""Stdio children die with their process: the spawner thread's death signal, the master's reaping."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from metamcp.mcp.children import ChildRecords, forget_dead_workers, reap_worker

ROOT = Path(__file__).resolve().parent.parent
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"

# A process that spawns a child from a short-lived thread, proves the child outlives that
# thread, then waits to be killed.
PARENT = """
import sys, threading, time
from metamcp.mcp.children import spawn
started = []
caller = threading.Thread(target=lambda: started.append(
    spawn([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True)))
caller.start()
caller.join()
time.sleep(0.5)
print(started[0].pid, started[0].poll(), flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie left to a non-reaping init counts as gone)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return not any(alive(pid) for pid in pids)


def test_child_outlives_the_calling_thread_but_not_the_process() -> None:
    marker = f"spawned-{secrets.token_hex(4)}"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, STUBBORN, marker], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().split()
        child, status = int(line[0]), line[1]
        assert status == "None" and alive(child)  # the thread that asked is gone, the child lives
        parent.kill()  # SIGKILL: no handler, no atexit
        parent.wait(timeout=10)
        assert gone_within([child], 10)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if child and alive(child):
            os.kill(child, signal.SIGKILL)


def test_master_kills_the_recorded_groups_of_an_exited_worker(tmp_path: Path) -> None:
    # A group leader with a member of its own, both ignoring SIGTERM (like npx -> node).
    script = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {STUBBORN!r}]); exec({STUBBORN!r})"
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        records = ChildRecords(tmp_path)
        records.add(leader.pid)
        assert (tmp_path / str(os.getpid()) / str(leader.pid)).exists()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(group_members(leader.pid)) < 2:
            time.sleep(0.05)
        members = group_members(leader.pid)
        assert len(members) == 2
        assert reap_worker(tmp_path, os.getpid()) == 1  # as if this process were the dead worker
        leader.wait(timeout=10)
        assert gone_within(members, 10)
        assert not (tmp_path / str(os.getpid())).exists()
        assert reap_worker(tmp_path, os.getpid()) == 0
    finally:
        try:
            os.killpg(leader.pid, signal.SIGKILL)
        except OSError:
            pass
        leader.wait(timeout=10)


def test_normal_stop_removes_the_record(tmp_path: Path) -> None:
    records = ChildRecords(tmp_path)
    records.add(12345)
    records.remove(12345)
    assert list((tmp_path / str(os.getpid())).iterdir()) == []
    assert reap_worker(tmp_path, os.getpid()) == 0


def test_records_of_dead_workers_are_forgotten_at_start(tmp_path: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = tmp_path / finished.stdout.strip()
    dead.mkdir()
    (dead / "4242").touch()
    ours = tmp_path / str(os.getpid())
    ours.mkdir()
    (ours / "4343").touch()
    assert forget_dead_workers(tmp_path) == 1
    assert not dead.exists() and (ours / "4343").exists()


def group_members(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members
