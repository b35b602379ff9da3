"""Process bookkeeping for the node supervisor: the tree below it (from /proc: torchrun starts
each worker in a session of its own, so no process group holds them all), signals to a set of
processes, and reaping, which falls to PID 1 in a container without an init."""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def become_subreaper() -> None:
    """Orphans below us are re-parented to us, as to PID 1 in a pod: outside a container too,
    a worker whose torchrun died is ours to kill and to reap."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def parents(proc: Path = Path("/proc")) -> dict[int, int]:
    """pid -> parent pid of every process we can see."""
    found: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses.
        found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def descendants(tree: Mapping[int, int], root: int) -> list[int]:
    """Every process below `root`, parents before their children."""
    children: dict[int, list[int]] = {}
    for pid, parent in tree.items():
        children.setdefault(parent, []).append(pid)
    found: list[int] = []
    frontier = sorted(children.get(root, []))
    while frontier:
        found += frontier
        frontier = sorted(c for pid in frontier for c in children.get(pid, []))
    return found


def children_of(pid: int) -> list[int]:
    return sorted(child for child, parent in parents().items() if parent == pid)


def below(pid: int) -> list[int]:
    return descendants(parents(), pid)


def send(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def reap() -> dict[int, int]:
    """Collect every child that has exited: pid -> return code (negative: the signal)."""
    exited: dict[int, int] = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no children at all
            return exited
        if pid == 0:
            return exited
        exited[pid] = os.waitstatus_to_exitcode(status)
