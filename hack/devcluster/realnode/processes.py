"""Background processes of a node, and finding them again from another process (`make
cluster-down` stops what `make cluster-up` started): pids in a state file, checked against
/proc so a recycled pid is never signalled."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def launch(command: list[str], log: Path, cwd: Path, env: dict[str, str] | None = None) -> int:
    """Start `command` in a session of its own (it outlives its starter), logging to `log`."""
    with log.open("ab") as handle:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                   start_new_session=True)  # fmt: skip
    return process.pid


def alive(pid: int, marker: str, settle: float = 1.0) -> bool:
    """The process lives, is no zombie, and its command line mentions `marker`.

    A process just started can show an empty command line: Popen returns once exec has closed
    the child's close-on-exec pipe, a moment before the kernel has set up the new program's
    arguments. An empty one is read again for up to `settle` seconds before it counts."""
    deadline = time.monotonic() + settle
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return False
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if cmdline or time.monotonic() > deadline:
            return marker in cmdline
        time.sleep(0.01)


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # not our child: its parent (or init) reaps it
        os.waitpid(pid, os.WNOHANG)


def stop(pid: int, marker: str, grace: float, sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal the process (its whole group), wait up to `grace`, then SIGKILL it."""
    if not alive(pid, marker):
        return
    _signal(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap(pid)
        if not alive(pid, marker):
            return
        time.sleep(0.1)
    _signal(pid, signal.SIGKILL)
    reap(pid)


def _signal(pid: int, sig: signal.Signals) -> None:
    """Its process group where it leads one (what it started goes too), else the process."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def mentioning(marker: str) -> list[int]:
    """Every process whose command line mentions `marker` (a node's containerd shims). No
    settling: kernel threads' command lines are always empty, and waiting a second on each
    made a scan take a minute; a process too new to show its arguments is found by the
    caller's next scan."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name), marker, settle=0):
            found.append(int(entry.name))
    return found


def named(marker: str, comm: str, timeout: float = 10.0) -> int:
    """The pid of the process called `comm` whose command line mentions `marker` (containerd
    under its tini), waiting for it to appear."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in mentioning(marker):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    return pid
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {comm} process mentioning {marker} appeared")
        time.sleep(0.05)


def unmount_under(*directories: Path) -> None:
    """Lazily unmount everything mounted below these directories, deepest first (overlay
    roots, pod volumes, network namespaces of a killed node)."""
    prefixes = [str(d.resolve()) + "/" for d in directories]
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")
        if any(point.startswith(prefix) for prefix in prefixes):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def http_ok(url: str) -> bool:
    """Whether `url` answers 200 (a health endpoint on loopback)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
