"""The decisions of the node supervisor (`pretrain_trainer.node`), as pure functions: how long
the workers may take to save after SIGTERM, whether torchrun failed because the rendezvous store
was lost, and what to do once torchrun has exited."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass

from pretrain_trainer.errors import EXIT_BAD_CONFIGURATION

# torchrun is started again in the pod this often after losing its store (the operator recreates
# the rendezvous pod; torchrun waits for it to answer): more losses than that fail the pod.
RENDEZVOUS_RERUNS = 5
# What torchrun's own error file (TORCHELASTIC_ERROR_FILE) says when a call to the c10d store
# failed: every store call of its rendezvous backend raises this, at the first rendezvous, in
# the keep-alive of the monitoring loop and at the next round alike (torch 2.15).
LOST_RENDEZVOUS = "RendezvousConnectionError"


@dataclass(frozen=True, slots=True)
class StopBudget:
    """After SIGTERM: the workers get `save_seconds` to finish their step and save (torchrun's
    own shutdown waits as long before it kills them); what is still alive `kill_seconds` after
    the signal is killed, before the kubelet does it at the end of the grace period."""

    save_seconds: int
    kill_seconds: float


def stop_budget(grace_seconds: float) -> StopBudget:
    """Leave a margin of a tenth of the grace period (2 to 15 s) for killing what is left and
    exiting: the kubelet counts the grace period from its SIGTERM to PID 1."""
    margin = min(max(grace_seconds / 10, 2.0), 15.0)
    save = max(1, int(grace_seconds - margin))
    return StopBudget(save_seconds=save, kill_seconds=save + margin / 2)


def torchrun_error(text: str) -> str:
    """The message of torchrun's error file (`{"message": {"message": ...}}` or
    `{"message": "..."}`), '' for anything else."""
    try:
        document = json.loads(text)
    except ValueError:
        return ""
    message = document.get("message") if isinstance(document, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    return message if isinstance(message, str) else ""


def lost_rendezvous(error: str) -> bool:
    return error.startswith(LOST_RENDEZVOUS)


def exit_status(returncode: int) -> int:
    """A child's return code (negative: killed by that signal) as a shell reports it."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the supervisor does once torchrun has exited: exit with `code`, or run it again."""

    code: int
    rerun: bool = False
    why: str = ""


def after_torchrun(
    returncode: int,
    configuration_error: str | None,
    stop_signal: int | None,
    error: str,
    reruns_left: int,
) -> Outcome:
    """A configuration error fails the pod with 78 whatever else happened (retrying cannot
    help); a stop on request exits as the signal says unless training had just finished; a lost
    rendezvous reruns torchrun while reruns are left; anything else exits as torchrun did."""
    if configuration_error:
        return Outcome(EXIT_BAD_CONFIGURATION, why=configuration_error)
    if stop_signal is not None:
        name = signal.Signals(stop_signal).name
        return Outcome(0 if returncode == 0 else 128 + stop_signal, why=f"stopped on {name}")
    if returncode == 0:
        return Outcome(0, why="training finished")
    if lost_rendezvous(error) and reruns_left > 0:
        return Outcome(0, rerun=True, why=f"torchrun lost its rendezvous store ({error})")
    return Outcome(exit_status(returncode), why=f"torchrun exited with {exit_status(returncode)}"
                   + (f": {error}" if error else ""))  # fmt: skip
