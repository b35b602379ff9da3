"""devcluster's process bookkeeping: a process just started counts as alive. Popen returns while
the kernel is still setting up the new program, when /proc/PID/cmdline reads empty; treating that
as "not ours" made the gs:// server's start fail at once and leak the server (CI of a23567a)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from devcluster.realnode import processes


def test_a_process_just_started_is_alive_and_found_by_its_marker(tmp_path: Path) -> None:
    started = []
    try:
        for number in range(100):
            log = tmp_path / f"{number}.log"
            pid = processes.launch(["sleep", "30", f"{number}"], log, tmp_path)
            started.append(pid)
            assert processes.alive(pid, f"sleep 30 {number}"), f"launch {number}"
        assert not processes.alive(started[0], "another program")
    finally:
        for pid in started:
            processes.stop(pid, "sleep 30", 5, signal.SIGKILL)
    stopped = subprocess.run(["pgrep", "-f", "^sleep 30 "], capture_output=True, text=True)
    assert str(started[-1]) not in stopped.stdout.split()


def test_a_node_process_is_found_among_the_machines_processes_at_once(tmp_path: Path) -> None:
    """How a node finds its containerd (under tini). The scan reads every process, kernel
    threads too, whose command lines are always empty: settling on each of them, as `alive`
    does for one process just started, made every real node's start time out (CI of 04fddf1)."""
    kernel_threads = [e for e in Path("/proc").iterdir() if e.name.isdigit()
                      and not (e / "cmdline").read_bytes()]  # fmt: skip
    assert kernel_threads, "no process with an empty command line to scan past"
    seconds = f"30.{os.getpid()}{time.monotonic_ns() % 10**6}"  # a marker sleep accepts
    pid = processes.launch(["tini", "-s", "--", "sleep", seconds], tmp_path / "log", tmp_path)
    try:
        assert processes.named(seconds, "sleep", timeout=5) != pid  # the child, not tini
    finally:
        processes.stop(pid, seconds, 5, signal.SIGKILL)
