"""`python -m pretrain_trainer.node [--grace-seconds N] -- TORCHRUN_ARGS`: PID 1 of a node pod.

It runs torchrun (`python -m torch.distributed.run TORCHRUN_ARGS`) as its child, because what a
pod needs of PID 1 is not what torchrun does:
- a worker that exits 78 (bad configuration) fails the pod at once with 78 and its one-line
  reason as the termination message, where torchrun would restart it and then exit 1;
- SIGTERM (deletion, eviction; the kubelet signals PID 1 only) goes straight to the workers, which
  finish their step, save and write the saved step as the termination message; they get the
  grace period less a margin, where torchrun's shutdown would kill them after 30 s;
- torchrun that lost its rendezvous store (the rendezvous pod died; the operator recreates it)
  runs again in the pod, a few times, instead of failing the pod;
- orphans are reaped (a container has no init), and whatever is left at the end is killed.
Any other failure is left to torchrun's local restarts, then to the operator, which recreates
the failed pod.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from pretrain_trainer import processes, termination
from pretrain_trainer.errors import EXIT_BAD_CONFIGURATION
from pretrain_trainer.supervision import (
    RENDEZVOUS_RERUNS,
    Outcome,
    StopBudget,
    after_torchrun,
    stop_budget,
    torchrun_error,
)

DEFAULT_GRACE_SECONDS = 30  # Kubernetes' default terminationGracePeriodSeconds
POLL_SECONDS = 0.1  # how soon a worker's configuration error is acted on
REAP_SECONDS = 5.0  # for what was killed to go


def log(message: str) -> None:
    print(f"pretrain-node: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """Runs torchrun until it exits for good; `run` returns the pod's exit code."""

    def __init__(self, torchrun_arguments: Sequence[str], budget: StopBudget, workdir: Path):
        self.arguments = list(torchrun_arguments)
        self.budget = budget
        self.reason_file = workdir / "configuration-error"
        self.error_file = workdir / "torchrun-error.json"
        self.stop_signal: int | None = None  # SIGTERM or SIGINT, once received
        self.stop_deadline: float | None = None  # when what is left is killed
        self._wakeup = -1  # the read end of the signals' wakeup pipe
        self._exited: dict[int, int] = {}  # reaped children: pid -> return code

    def run(self) -> int:
        processes.become_subreaper()
        self._handle_signals()
        reruns = RENDEZVOUS_RERUNS
        while True:
            returncode = self._torchrun()
            outcome = after_torchrun(returncode,
                                     termination.read_configuration_error(self.reason_file),
                                     self.stop_signal, self._torchrun_error(), reruns)  # fmt: skip
            if not outcome.rerun:
                self._finish(outcome)
                return outcome.code
            reruns -= 1
            log(f"{outcome.why}; running it again ({reruns} more times at most)")

    def _handle_signals(self) -> None:
        def stop(signum: int, _: FrameType | None) -> None:
            if self.stop_signal is None:
                self.stop_signal = signum

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop up
        self._wakeup, writer = os.pipe()
        os.set_blocking(self._wakeup, False)
        os.set_blocking(writer, False)
        signal.set_wakeup_fd(writer)

    def _torchrun(self) -> int:
        self.error_file.unlink(missing_ok=True)
        environment = {
            **os.environ,
            termination.CONFIGURATION_ERROR_FILE: str(self.reason_file),
            "TORCHELASTIC_ERROR_FILE": str(self.error_file),  # why torchrun itself failed
            # torchrun's own shutdown (after our signal, or a lost store) waits for the save too.
            "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(self.budget.save_seconds),
        }
        command = [sys.executable, "-m", "torch.distributed.run", *self.arguments]
        self._exited.clear()  # a pid is reused in time
        torchrun = subprocess.Popen(command, env=environment)
        returncode = self._watch(torchrun.pid)
        torchrun.returncode = returncode  # reaped by us, not by Popen
        self._kill_below("what torchrun left")
        return returncode

    def _watch(self, torchrun: int) -> int:
        """Until torchrun exits: act on a configuration error, a stop signal, the deadline."""
        while True:
            self._reap()  # torchrun, and orphans re-parented to us
            if torchrun in self._exited:
                return self._exited.pop(torchrun)
            if termination.read_configuration_error(self.reason_file):
                # Retrying cannot help: stop it all before torchrun restarts the worker.
                self._kill_below("a worker's configuration error")
            elif self.stop_signal is not None and self.stop_deadline is None:
                self._forward(torchrun, self.stop_signal)
            elif self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
                self._kill_below(f"the {self.budget.save_seconds} s to save are over")
            self._sleep()

    def _forward(self, torchrun: int, signum: int) -> None:
        """Straight to the workers (torchrun's children: their sessions are their own), which
        finish the step and save; and to torchrun, which then shuts down rather than restarting
        them once they exit."""
        self.stop_deadline = time.monotonic() + self.budget.kill_seconds
        workers = processes.children_of(torchrun)
        log(f"{signal.Signals(signum).name}: to the workers {workers} and torchrun; "
            f"{self.budget.save_seconds} s to save")  # fmt: skip
        processes.send(workers, signum)
        processes.send([torchrun], signum)

    def _kill_below(self, why: str) -> None:
        """SIGKILL every process below us and reap it (bounded: a process in D state may not go)."""
        self._reap()
        rest = processes.below(os.getpid())
        if not rest:
            return
        log(f"{why}: killing {len(rest)} processes")
        processes.send(rest, signal.SIGKILL)
        deadline = time.monotonic() + REAP_SECONDS
        while time.monotonic() < deadline:
            if self._reaped_all():
                return
            self._sleep(0.05)

    def _reaped_all(self) -> bool:
        self._reap()
        return not processes.below(os.getpid())

    def _reap(self) -> None:
        self._exited.update(processes.reap())

    def _sleep(self, seconds: float = POLL_SECONDS) -> None:
        """Wait for a signal (SIGCHLD included) or the timeout."""
        with contextlib.suppress(InterruptedError):
            select.select([self._wakeup], [], [], seconds)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup, 64):
                pass

    def _torchrun_error(self) -> str:
        try:
            return torchrun_error(self.error_file.read_text())
        except FileNotFoundError:
            return ""

    def _finish(self, outcome: Outcome) -> None:
        log(f"exiting with {outcome.code}: {outcome.why}")
        if outcome.code == EXIT_BAD_CONFIGURATION:
            termination.write_message(termination.one_line(outcome.why) + "\n")
        elif outcome.code and self.stop_signal is None:
            # A failure: an empty message lets the kubelet fall back to the logs, which say why
            # (rather than the step a stop in another pod once made a worker report here).
            termination.write_message("")


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Ours before `--`, torchrun's after it."""
    if "--" not in argv:
        return list(argv), []
    at = list(argv).index("--")
    return list(argv[:at]), list(argv[at + 1 :])


def main(argv: Sequence[str] | None = None) -> int:
    own, torchrun = split_arguments(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m pretrain_trainer.node",
        usage="%(prog)s [--grace-seconds N] -- TORCHRUN_ARGS", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--grace-seconds", type=float, default=DEFAULT_GRACE_SECONDS, metavar="N",
                        help="the pod's terminationGracePeriodSeconds (%(default)s)")  # fmt: skip
    args = parser.parse_args(own)
    if not torchrun:
        parser.error("torchrun's arguments are missing (after --)")
    if args.grace_seconds <= 0:
        parser.error("--grace-seconds: must be positive")
    workdir = Path(tempfile.mkdtemp(prefix="pretrain-node-"))  # /tmp: the pod's emptyDir
    try:
        return Supervisor(torchrun, stop_budget(args.grace_seconds), workdir).run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
