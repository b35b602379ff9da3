"""The node supervisor, `python -m pretrain_trainer.node` (PID 1 of a node pod), over a real
torchrun and real workers: a worker's configuration error ends it at once with 78 and the
reason as the termination message, the worker never restarted; SIGTERM makes the workers save
the step they are at and report it, and it exits 143 within the grace period; a generic failure
is still retried by torchrun; a rendezvous store lost and started again costs a torchrun rerun,
not the pod."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pretrain_operator import launch
from pretrain_operator.observe import parse_metrics
from pretrain_trainer.checkpoint import latest
from pretrain_trainer.supervision import stop_budget
from trainer_runs import JOB, descendants, step_losses


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_config(directory: Path, **changes: Any) -> Path:
    """The operator's job.json of the tiny test job, with `changes` merged into its spec."""
    spec = json.loads(json.dumps(JOB["spec"]))
    for key, value in changes.items():
        spec[key] = {**spec[key], **value}
    path = directory / "job.json"
    path.write_text(json.dumps({"kind": "PretrainJob", "name": "node", "spec": spec}))
    return path


class Node:
    """One supervisor as a pod runs it (the command the operator builds), its output in a file."""

    def __init__(self, tmp_path: Path, pvc_root: Path, config: Path, *, grace: int = 60,
                 processes: int = 1, endpoint: str | None = None) -> None:  # fmt: skip
        # A store of our own at a local address: torchrun must not start one there itself (it
        # hosts the store when the endpoint is on its machine and nothing listens there yet).
        options = ["--rdzv-conf=is_host=false"] if endpoint else []
        self.output = tmp_path / "output"
        self.log = tmp_path / "node.log"
        self.termination_log = tmp_path / "termination-log"
        torchrun = launch.torchrun_arguments(
            min_nodes=1, max_nodes=1, processes_per_node=processes,
            rendezvous_endpoint=endpoint or f"127.0.0.1:{free_port()}",  # torchrun hosts it
            rendezvous_id="node", config=str(config), output=str(self.output),
        )  # fmt: skip
        command = launch.node_command(grace, options + torchrun)
        command[0] = sys.executable  # `python` of this environment
        environment = {**os.environ, **launch.ENVIRONMENT, "PRETRAIN_PVC_ROOT": str(pvc_root),
                       "PRETRAIN_TERMINATION_LOG": str(self.termination_log),
                       "OMP_NUM_THREADS": "1"}  # fmt: skip
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, env=environment, stdout=log,
                                            stderr=subprocess.STDOUT)  # fmt: skip
        self.config = config

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def steps(self) -> int:
        path = self.output / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return sum('"loss": ' in line for line in lines)

    def wait_for(self, condition: Callable[[], bool], what: str, seconds: float = 300) -> float:
        """Poll until `condition`; the time it became true."""
        deadline = time.monotonic() + seconds
        while not condition():
            tail = self.text()[-3000:]
            assert self.process.poll() is None, f"exited {self.process.returncode}: {tail}"
            assert time.monotonic() < deadline, f"no {what} after {seconds} s: {tail}"
            time.sleep(0.05)
        return time.monotonic()

    def exit_code(self, seconds: float = 300) -> int:
        return self.process.wait(timeout=seconds)

    def left_behind(self) -> list[str]:
        """Processes still running this job (torchrun, workers): none once the supervisor ends."""
        mine = str(self.config)
        found = []
        for entry in Path("/proc").iterdir():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if entry.name.isdigit() and mine in command:
                found.append(f"{entry.name}: {command}")
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.stop()


def test_a_configuration_error_ends_the_pod_at_once_with_78_and_its_reason(
    pvc_root: Path, tmp_path: Path, nodes: list[Node]
) -> None:
    config = job_config(tmp_path, data={"sources": [{"uri": "pvc://corpus/missing.jsonl"}]})
    node = Node(tmp_path, pvc_root, config)
    nodes.append(node)
    reason = "spec.data.sources[0].uri: pvc://corpus/missing.jsonl does not exist"
    reported = node.wait_for(lambda: f"pretrain: {reason}" in node.text(), "the worker's reason")
    assert node.exit_code() == 78
    seconds = time.monotonic() - reported
    print(f"from the worker's reason to the supervisor's exit: {seconds:.2f} s")
    assert seconds < 5
    assert node.termination_log.read_text() == reason + "\n"
    # The worker ran once: torchrun restarted it not even once (it would do so 3 times).
    assert node.text().count(f"pretrain: {reason}") == 1, node.text()
    assert node.left_behind() == []


def test_sigterm_saves_the_current_step_reports_it_and_exits_143_within_the_grace(
    pvc_root: Path, tmp_path: Path, nodes: list[Node]
) -> None:
    config = job_config(tmp_path, training={"maxSteps": 100000},
                        checkpoint={"everySteps": 100000})  # fmt: skip
    grace = 120  # the default; on a loaded 2-core machine the workers' exit alone took 30 s
    node = Node(tmp_path, pvc_root, config, grace=grace, processes=2)
    nodes.append(node)
    node.wait_for(lambda: node.steps() >= 3, "3 steps")
    signalled = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    assert node.exit_code(grace) == 143, node.text()[-3000:]
    seconds = time.monotonic() - signalled
    print(f"SIGTERM -> saved and exited: {seconds:.1f} s (grace {grace} s)")
    assert seconds < stop_budget(grace).kill_seconds

    found = latest(node.output / "checkpoints")  # complete and its checksums right
    assert found is not None
    step = found[1]["step"]
    assert step == max(step_losses(node.output)) >= 3  # the step the workers were at
    report = parse_metrics(node.termination_log.read_text())  # as the operator reads it
    assert (report.checkpoint_step, report.step) == (step, step)
    assert report.tokens == step * 12 * 32
    # Both workers stopped once, at the same step; torchrun restarted neither.
    assert node.text().count("pretrain: stopped at step") == 2, node.text()
    assert node.text().count(f"pretrain: stopped at step {step} on SIGTERM") == 2
    assert node.left_behind() == []


def test_what_does_not_stop_in_time_is_killed_within_the_grace(
    pvc_root: Path, tmp_path: Path, nodes: list[Node]
) -> None:
    """Workers and torchrun that cannot react (stopped: a hung collective, a wedged save) are
    killed at the end of the save budget plus half the margin, before the kubelet would."""
    config = job_config(tmp_path, training={"maxSteps": 100000})
    grace = 10
    node = Node(tmp_path, pvc_root, config, grace=grace)
    nodes.append(node)
    node.wait_for(lambda: node.steps() >= 1, "a step")
    frozen = descendants(node.process.pid)  # torchrun and its worker
    assert len(frozen) >= 2
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    signalled = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    assert node.exit_code(grace) == 143
    seconds = time.monotonic() - signalled
    print(f"SIGTERM -> all killed: {seconds:.1f} s (grace {grace} s)")
    assert stop_budget(grace).save_seconds <= seconds < grace
    assert "the 8 s to save are over: killing" in node.text()
    assert node.left_behind() == []


def test_a_generic_failure_is_still_retried_by_torchrun(
    pvc_root: Path, tmp_path: Path, nodes: list[Node]
) -> None:
    config = job_config(tmp_path, training={"maxSteps": 4})
    node = Node(tmp_path, pvc_root, config)
    nodes.append(node)
    blocker = node.output / "metrics.jsonl"
    blocker.mkdir(parents=True)  # rank 0 cannot open it: IsADirectoryError, exit 1
    node.wait_for(lambda: "pretrain: IsADirectoryError" in node.text(), "the first failure")
    blocker.rmdir()
    assert node.exit_code() == 0, node.text()[-3000:]
    failures = node.text().count("pretrain: IsADirectoryError")
    assert 1 <= failures <= launch.MAX_LOCAL_RESTARTS  # one torchrun, restarting its worker
    assert node.text().count("pretrain-node: exiting with 0") == 1
    assert sorted(step_losses(node.output)) == [1, 2, 3, 4]
    assert parse_metrics(node.termination_log.read_text()).step == 4


def store_port() -> int:
    """A free port below the ephemeral range: no outgoing connection (torchrun's own, trying to
    reach the lost store) can hold it when the store is started again on it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 8000), low), 100):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def start_store(port: int, log: Path) -> subprocess.Popen[str]:
    with log.open("a") as errors:
        store = subprocess.Popen([sys.executable, "-m", "pretrain_trainer.rendezvous",
                                  "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.PIPE, stderr=errors, text=True)  # fmt: skip
    assert store.stdout is not None
    assert "listening" in store.stdout.readline(), log.read_text()[-3000:]
    return store


def test_a_lost_rendezvous_store_costs_a_torchrun_rerun_not_the_pod(
    pvc_root: Path, tmp_path: Path, nodes: list[Node]
) -> None:
    port, store_log = store_port(), tmp_path / "store.log"
    store = start_store(port, store_log)
    try:
        config = job_config(tmp_path, training={"maxSteps": 40})
        node = Node(tmp_path, pvc_root, config, endpoint=f"127.0.0.1:{port}")
        nodes.append(node)
        node.wait_for(lambda: node.steps() >= 3, "3 steps")
        store.kill()  # the rendezvous pod is lost
        store.wait()
        node.wait_for(lambda: "lost its rendezvous store" in node.text(), "a torchrun rerun")
        store = start_store(port, store_log)  # ... and recreated by the operator
        assert node.exit_code() == 0, node.text()[-3000:]
    finally:
        store.kill()
        store.wait()
    assert "RendezvousConnectionError" in node.text()
    # The workers saved on torchrun's shutdown and the rerun went on from there: every step
    # once (step_losses refuses a step reported twice), after a resume.
    assert sorted(step_losses(node.output)) == list(range(1, 41))
    lines = (node.output / "metrics.jsonl").read_text().splitlines()
    assert any('"restart"' in line for line in lines)


def test_a_torchrun_that_fails_closes_its_rendezvous_for_good(
    pvc_root: Path, tmp_path: Path, nodes: list[Node]
) -> None:
    """Why a node pod's failure restarts the whole gang and the rendezvous pod
    (reconcile._restart_gang): a torchrun whose workers keep failing closes the rendezvous as it
    exits, so a pod started again in it could never train."""
    port, store_log = store_port(), tmp_path / "store.log"
    store = start_store(port, store_log)
    try:
        failing, again = tmp_path / "failing", tmp_path / "again"
        failing.mkdir()
        again.mkdir()
        first = Node(failing, pvc_root, job_config(failing), endpoint=f"127.0.0.1:{port}")
        nodes.append(first)
        (first.output / "metrics.jsonl").mkdir(parents=True)  # every worker fails: exit 1
        assert first.exit_code() == 1, first.text()[-3000:]
        assert first.text().count("pretrain: IsADirectoryError") == launch.MAX_LOCAL_RESTARTS + 1
        second = Node(again, pvc_root, job_config(again), endpoint=f"127.0.0.1:{port}")
        nodes.append(second)
        assert second.exit_code() == 1, second.text()[-3000:]
    finally:
        store.kill()
        store.wait()
    assert "RendezvousClosedError" in second.text()
    assert second.steps() == 0
