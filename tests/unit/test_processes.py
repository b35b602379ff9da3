"""devcluster's process bookkeeping: a process just started counts as alive. Popen returns while
the kernel is still setting up the new program, when /proc/PID/cmdline reads empty; treating that
as "not ours" made the gs:// server's start fail at once and leak the server (CI of a23567a)."""

from __future__ import annotations

import signal
import subprocess
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
