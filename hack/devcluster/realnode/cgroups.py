"""A node's own cgroup (its kubelet's cgroupRoot) in every cgroup v1 hierarchy this VM mounts,
and its removal with every process left in it: how a node is killed like a machine."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
HIERARCHIES = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
               "systemd")  # fmt: skip


def _mounted() -> list[Path]:
    return [CGROUP / name for name in HIERARCHIES if (CGROUP / name / "cgroup.procs").exists()]


def create(name: str) -> None:
    """`/<name>` in each hierarchy; cpuset needs its cpus and mems before anything can join."""
    for hierarchy in _mounted():
        path = hierarchy / name
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for setting in ("cpuset.cpus", "cpuset.mems"):
                (path / setting).write_text((hierarchy / setting).read_text())


def processes(name: str) -> set[int]:
    found: set[int] = set()
    for hierarchy in _mounted():
        for procs in (hierarchy / name).rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                found |= {int(line) for line in procs.read_text().split()}
    return found


def kill_and_remove(name: str, timeout: float = 10.0) -> None:
    """SIGKILL everything in the cgroup, then remove its directories, deepest first."""
    deadline = time.monotonic() + timeout
    while (pids := processes(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    for hierarchy in _mounted():
        root = hierarchy / name
        if not root.exists():
            continue
        for directory in sorted((p for p in root.rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True):  # fmt: skip
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


def pod_processes(pod_uid: str) -> set[int]:
    """The processes of a pod's containers on any real node, not its sandbox (pause): killing
    them is a crash of the pod's workload, as an OOM kill or a segfault is."""
    found: set[int] = set()
    pids_hierarchy = CGROUP / "pids"
    for pod_cgroup in pids_hierarchy.glob(f"devcluster-*/kubepods/**/pod{pod_uid}"):
        for procs in pod_cgroup.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                found |= {int(line) for line in procs.read_text().split()}
    return {pid for pid in found if not _is_pause(pid)}


def _is_pause(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"/pause"
    except OSError:
        return False
