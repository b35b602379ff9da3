"""The node supervisor's pure parts: the save budget within a grace period, what torchrun's
error file says, what to do once torchrun has exited, and the process tree."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain_trainer import termination
from pretrain_trainer.node import split_arguments
from pretrain_trainer.processes import descendants
from pretrain_trainer.supervision import (
    RENDEZVOUS_RERUNS,
    Outcome,
    after_torchrun,
    exit_status,
    stop_budget,
    torchrun_error,
)

# torchrun's error file after its c10d store went away (torch 2.15, the callstack shortened).
LOST_STORE = json.dumps({"message": {
    "message": "RendezvousConnectionError: The connection to the C10d store has failed. See "
               "inner exception for details.",
    "extraInfo": {"py_callstack": "Traceback (most recent call last): ...", "timestamp": "1"},
}})  # fmt: skip


@pytest.mark.parametrize(
    ("grace", "save", "kill"),
    [(120, 108, 114.0), (10, 8, 9.0), (30, 27, 28.5), (3600, 3585, 3592.5)],
)
def test_the_workers_save_within_the_grace_period_less_a_margin(
    grace: int, save: int, kill: float
) -> None:
    budget = stop_budget(grace)
    assert (budget.save_seconds, budget.kill_seconds) == (save, kill)
    assert budget.save_seconds < budget.kill_seconds < grace


def test_torchrun_error_reads_both_shapes_and_nothing_else() -> None:
    assert torchrun_error(LOST_STORE).startswith("RendezvousConnectionError: ")
    assert torchrun_error(json.dumps({"message": "SignalException: got signal: 15"})) == (
        "SignalException: got signal: 15"
    )
    assert torchrun_error("") == ""
    assert torchrun_error("[1, 2]") == ""
    assert torchrun_error(json.dumps({"message": {"errorCode": 3}})) == ""


def test_a_configuration_error_wins_over_everything() -> None:
    reason = "spec.data.sources[0].uri: pvc://corpus/missing.jsonl does not exist"
    for returncode, stop in [(1, None), (-9, None), (1, signal.SIGTERM), (0, None)]:
        outcome = after_torchrun(returncode, reason, stop, LOST_STORE, RENDEZVOUS_RERUNS)
        assert outcome == Outcome(78, why=reason)


def test_a_stop_exits_as_the_signal_says_unless_training_had_finished() -> None:
    assert after_torchrun(1, None, signal.SIGTERM, "", 5).code == 143
    assert after_torchrun(-9, None, signal.SIGTERM, "", 5).code == 143  # killed at the deadline
    assert after_torchrun(1, None, signal.SIGINT, "", 5).code == 130
    assert after_torchrun(0, None, signal.SIGTERM, "", 5).code == 0
    # Stopping: no rerun, even though the store is gone too.
    assert not after_torchrun(1, None, signal.SIGTERM, torchrun_error(LOST_STORE), 5).rerun


def test_a_lost_rendezvous_reruns_torchrun_while_reruns_are_left() -> None:
    error = torchrun_error(LOST_STORE)
    assert after_torchrun(1, None, None, error, 1).rerun
    assert after_torchrun(1, None, None, error, 0) == Outcome(
        1, why=f"torchrun exited with 1: {error}"
    )


def test_other_failures_exit_as_torchrun_did() -> None:
    assert after_torchrun(1, None, None, "", 5) == Outcome(1, why="torchrun exited with 1")
    assert after_torchrun(-9, None, None, "", 5).code == 137  # torchrun itself killed (OOM)
    assert not after_torchrun(1, None, None, "RendezvousTimeoutError: ...", 5).rerun
    assert after_torchrun(0, None, None, "", 5) == Outcome(0, why="training finished")
    assert (exit_status(-15), exit_status(0), exit_status(2)) == (143, 0, 2)


def test_the_arguments_after_the_separator_are_torchrun_s() -> None:
    assert split_arguments(["--grace-seconds=30", "--", "--nnodes=1:2", "-m", "x", "--", "y"]) == (
        ["--grace-seconds=30"],
        ["--nnodes=1:2", "-m", "x", "--", "y"],
    )
    assert split_arguments(["--help"]) == (["--help"], [])


def test_descendants_go_down_the_whole_tree() -> None:
    # 1 -> supervisor 10 -> torchrun 20 -> workers 30, 31 (-> compile worker 40); 50 is unrelated.
    tree = {10: 1, 20: 10, 30: 20, 31: 20, 40: 31, 50: 1}
    assert descendants(tree, 10) == [20, 30, 31, 40]
    assert descendants(tree, 20) == [30, 31, 40]
    assert descendants(tree, 40) == []


ORPHAN = """
import os, subprocess, time
from pretrain_trainer import processes
processes.become_subreaper()
shell = subprocess.Popen(["sh", "-c", "sleep 0.5 & echo $!"], stdout=subprocess.PIPE, text=True)
orphan = int(shell.stdout.readline())
shell.wait()  # the sleep's parent is gone: the sleep is re-parented to us, as to PID 1 in a pod
reaped, deadline = {}, time.monotonic() + 30
while orphan not in reaped and time.monotonic() < deadline:
    reaped.update(processes.reap())
    time.sleep(0.05)
print(reaped.get(orphan), processes.below(os.getpid()))
"""


def test_orphans_are_re_parented_to_the_supervisor_and_reaped() -> None:
    done = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    assert done.stdout.split() == ["0", "[]"], done.stderr


def test_a_worker_s_reason_is_one_line_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "configuration-error"
    assert termination.read_configuration_error(target) is None
    monkeypatch.delenv(termination.CONFIGURATION_ERROR_FILE, raising=False)
    termination.record_configuration_error("x: ignored")  # no supervisor: nothing to write
    monkeypatch.setenv(termination.CONFIGURATION_ERROR_FILE, str(target))
    termination.record_configuration_error("spec.tokenizer.uri: file:///t.json\ndoes not exist")
    assert termination.read_configuration_error(target) == (
        "spec.tokenizer.uri: file:///t.json does not exist"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["configuration-error"]  # no partial left
