"""Faults a training job survives, each with nothing lost: every step trained, each with the
loss of the fault-free `pretrain run`, and the same final model. For each fault the time from
the fault to the next completed step is printed (run with -s to see it).

Two jobs carry the five faults (each job start costs a minute on two cores): the worker faults
(a node pod's processes killed, the rendezvous pod's killed, a whole node's machine dead and its
Node deleted) and the control faults (the operator killed and restarted, suspend then resume).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from test_pretrain_job import assert_matches_reference, start_job

from devcluster.realnode.cgroups import pod_processes
from devcluster.realnode.pool import RealNodePool
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until
from e2e_support import CHECKPOINT_EVERY, MAX_STEPS, JobRun
from operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("operator")]


def kill_pod(run: JobRun, name: str) -> None:
    """SIGKILL every process of the pod's container: a crash, not a deletion (the pod turns
    Failed)."""
    [pod] = [p for p in run.pods() if p["metadata"]["name"] == name]
    pids = pod_processes(pod["metadata"]["uid"])
    assert pids, f"{name} runs no process"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def running_node_pods(run: JobRun) -> list[dict[str, Any]]:
    return [
        p
        for p in run.pods()
        if p["metadata"]["labels"]["pretrain.dev/role"] == "node"
        and p["status"].get("phase") == "Running"
    ]


def survive(run: JobRun, fault: str, after_step: int, inject: Any) -> None:
    """Wait for `after_step` (a checkpoint exists by then), inject, and time the first step
    completed once the fault has taken effect (a step in flight may still finish while a node
    stops or a job suspends: it does not count)."""
    run.wait_step(after_step)
    started = time.monotonic()
    inject()
    injected = time.monotonic()
    seconds = run.seconds_to_next_step((started, len(run.records)))
    print(
        f"{fault}: {seconds:.1f}s from the fault to the next completed step "
        f"({started + seconds - injected:.1f}s after the fault took effect)"
    )


def test_a_killed_node_pod_a_killed_rendezvous_and_a_lost_node(
    cluster: ClusterSession,
    namespace: str,
    real_nodes: RealNodePool,
    checkpoints: Path,
    reference: Path,
) -> None:
    nodes = [real_nodes.add(), real_nodes.add()]
    run = start_job(cluster, namespace, real_nodes, checkpoints)

    survive(run, "node pod killed", CHECKPOINT_EVERY + 1, lambda: kill_pod(run, "tiny-node-1"))

    # The lost node comes before the lost store: the group that trains on after the store is
    # gone can finish the job before its agents notice, and a lost node needs steps left to lose.
    step = max(r["step"] for r in run.records if "loss" in r)
    busiest = max(nodes, key=lambda n: sum(p["spec"]["nodeName"] == n for p in run.pods()))

    def machine_lost() -> None:
        real_nodes.stop(busiest)
        real_nodes.remove(busiest)  # as a cloud's node controller does for a deleted machine

    survive(run, f"node {busiest} lost", step + 1, machine_lost)
    moved = wait_until(
        lambda: running_node_pods(run)[1:] and running_node_pods(run),
        "two node pods running again",
        timeout=120,
    )
    assert all(p["spec"]["nodeName"] != busiest for p in moved)

    # The running group does not use the store between rendezvous rounds, so steps go on; the
    # agents lose it at their next keep-alive and shut their workers down (they save first), and
    # each pod's supervisor runs torchrun again, which waits for the recreated store: the workers
    # resume in the same pods, none is replaced. The metrics say when the last step is done (the
    # status says so a little later).
    def finished() -> bool:
        return any(r["step"] == MAX_STEPS and "loss" in r for r in run.records)

    before, fault = run.status().get("restarts", 0), run.mark()
    kill_pod(run, "tiny-rdzv")
    first = run.seconds_to_next_step(fault)
    wait_until(
        lambda: any("restart" in r for r in run.records[fault[1] :]) or finished(),
        "the workers to resume after the store was lost",
        timeout=180,
    )
    mark = run.mark()
    if not finished():  # so the last step comes after the mark, if none before it
        run.seconds_to_next_step(mark)
        print(
            f"rendezvous pod killed: {first:.1f}s to the next step, "
            f"{time.monotonic() - fault[0]:.1f}s to the first step after torchrun's rerun"
        )
    else:
        print(f"rendezvous pod killed: {first:.1f}s to the next step; training had finished")
    assert run.status().get("restarts", 0) == before  # losing the store took no pod down

    status = run.wait_phase("Succeeded", timeout=600)
    # The killed pod failed; the lost node's pods were disrupted (the pod garbage collector
    # gave them the DisruptionTarget condition), which the restart budget does not pay for.
    assert status["restarts"] == 1
    assert status["disruptions"] >= 1
    assert_matches_reference(run, reference)


def test_the_operator_restarted_and_a_suspend_then_resume(
    cluster: ClusterSession,
    namespace: str,
    real_nodes: RealNodePool,
    checkpoints: Path,
    reference: Path,
    operator: OperatorProcess,
) -> None:
    real_nodes.add()
    real_nodes.add()
    run = start_job(cluster, namespace, real_nodes, checkpoints)

    def suspend_and_resume() -> None:
        patch = '{"spec": {"suspend": %s}}'
        cluster.kubectl(
            "patch", "ptj", "tiny", "-n", namespace, "--type=merge", "-p", patch % "true"
        )
        run.wait_phase("Suspended", timeout=180)
        wait_until(lambda: not run.pods() or None, "the suspended job's pods gone", timeout=180)
        cluster.kubectl(
            "patch", "ptj", "tiny", "-n", namespace, "--type=merge", "-p", patch % "false"
        )

    survive(run, "suspend, then resume", CHECKPOINT_EVERY + 1, suspend_and_resume)
    # The pods do not need the operator: they train on while it is down. So the steps count
    # from the kill, not from when it is back (a restart under load outlasts the steps left).
    run.wait_step(2 * CHECKPOINT_EVERY + 1)
    mark = run.mark()
    operator.restart(kill=True)
    seconds = run.seconds_to_next_step(mark)
    print(f"operator killed and restarted: {seconds:.1f}s from the kill to the next step")
    run.wait_phase("Succeeded", timeout=600)
    assert_matches_reference(run, reference)
