"""Wall-clock facts about this process, for the restart records of metrics.jsonl."""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_start_time() -> float:
    """When this process started, in Unix seconds (to the kernel's clock tick, 10 ms): for a
    worker under torchrun, just after the rendezvous it was started for had completed. The
    current time where /proc cannot say (not Linux)."""
    try:
        # Field 22 of /proc/self/stat (after the command name, which may hold spaces): clock
        # ticks from boot to the start, on the clock CLOCK_BOOTTIME reads.
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        since_start = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()
    return time.time() - since_start
