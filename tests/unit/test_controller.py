"""The work queue's semantics (client-go's), and which watch events the controller lets through
to it: no cluster, no API call."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from pretrain_operator import kube, naming
from pretrain_operator.api import JobStatus
from pretrain_operator.controller import Controller, JobRecord, Settings
from pretrain_operator.workqueue import Outcome, WorkQueue, start_workers


async def _no_event(*_: object) -> None:
    pass


def run(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(scenario())


def test_a_key_added_many_times_while_waiting_is_reconciled_once() -> None:
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue("test-dedup")
        for _ in range(5):
            queue.add("a")
        queue.add("b")
        queue.add("a")
        assert len(queue) == 2
        taken = [await queue.get(), await queue.get()]
        queue.done("a")
        queue.done("b")
        assert len(queue) == 0
        return taken

    assert run(scenario) == ["a", "b"]


def test_a_key_marked_while_processing_is_reconciled_once_more_after() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue("test-dirty")
        queue.add("a")
        assert await queue.get() == "a"
        queue.add("a")  # an event during the reconcile
        queue.add("a")
        assert len(queue) == 0  # not handed out while it is being processed
        queue.done("a")
        assert len(queue) == 1
        assert await queue.get() == "a"
        queue.done("a")
        assert len(queue) == 0

    run(scenario)


def test_one_reconcile_per_key_at_a_time_and_keys_are_served_in_order() -> None:
    async def scenario() -> tuple[int, list[str]]:
        queue: WorkQueue[str] = WorkQueue("test-workers")
        running: set[str] = set()
        most = 0
        order: list[str] = []

        async def reconcile(key: str) -> Outcome:
            nonlocal most
            assert key not in running, f"{key} reconciled twice at once"
            running.add(key)
            most = max(most, len(running))
            order.append(key)
            await asyncio.sleep(0.02)
            if key == "a" and order.count("a") == 1:
                queue.add("a")  # changed while being reconciled: once more, after
            running.discard(key)
            return Outcome()

        workers = start_workers(queue, 3, reconcile, logging.getLogger("t"))
        for key in ["a", "b", "c", "d", "a", "b"]:
            queue.add(key)
        await asyncio.sleep(0.2)
        queue.shut_down()
        await asyncio.gather(*workers)
        return most, order

    most, order = run(scenario)
    assert most == 3  # the worker bound, reached
    assert order[:4] == ["a", "b", "c", "d"]  # first in, first out: no key starves another
    assert order.count("a") == 2
    assert order.count("b") == 1


def test_of_several_delays_for_a_key_the_earliest_wins() -> None:
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue("test-delay")
        queue.add_after("a", 0.3)
        queue.add_after("a", 0.05)  # earlier: replaces
        queue.add_after("a", 0.5)  # later: ignored
        queue.add_after("b", 0.1)
        queue.add_after("gone", 0.05)
        queue.discard("gone")
        got = []
        for _ in range(2):
            got.append(await asyncio.wait_for(queue.get(), 1))
            queue.done(got[-1])
        await asyncio.sleep(0.6)
        assert len(queue) == 0  # neither the ignored delay nor the discarded key came back
        return got

    assert run(scenario) == ["a", "b"]


def test_a_failing_key_is_retried_with_a_doubling_delay_until_it_succeeds() -> None:
    async def scenario() -> tuple[list[float], int]:
        loop = asyncio.get_running_loop()
        queue: WorkQueue[str] = WorkQueue("test-retry")
        times: list[float] = []

        async def reconcile(key: str) -> Outcome:
            times.append(loop.time())
            return Outcome(failed=len(times) < 6)

        workers = start_workers(queue, 1, reconcile, logging.getLogger("t"))
        queue.add("a")
        await asyncio.sleep(0.6)
        queue.shut_down()
        await asyncio.gather(*workers)
        return [b - a for a, b in itertools.pairwise(times)], queue.failures("a")

    gaps, failures = run(scenario)
    assert len(gaps) == 5  # 5 failures, then the success
    assert failures == 0  # a success forgets them
    # 5 ms doubling (controller-runtime's default limiter): 5, 10, 20, 40, 80 ms.
    for gap, expected in zip(gaps, [0.005, 0.01, 0.02, 0.04, 0.08], strict=True):
        assert expected <= gap < expected + 0.05


def test_a_reconcile_that_raises_is_retried_and_does_not_stop_its_worker() -> None:
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue("test-raise")
        seen: list[str] = []

        async def reconcile(key: str) -> Outcome:
            seen.append(key)
            if seen.count(key) == 1 and key == "bad":
                raise RuntimeError("a bug")
            return Outcome()

        workers = start_workers(queue, 1, reconcile, logging.getLogger("t"))
        queue.add("bad")
        queue.add("good")
        await asyncio.sleep(0.1)
        queue.shut_down()
        await asyncio.gather(*workers)
        return seen

    assert run(scenario) == ["bad", "good", "bad"]


# ---- which events reach the queue --------------------------------------------------------


def controller() -> Controller:
    return Controller(cast(kube.Api, None), Settings(), _no_event)  # no API call here


def job(uid: str = "u1", generation: int = 1, status: dict[str, Any] | None = None) -> Any:
    body: dict[str, Any] = {"metadata": {"uid": uid, "name": "j", "namespace": "ns",
                                         "generation": generation}}  # fmt: skip
    if status is not None:
        body["status"] = status
    return body


def test_the_echo_of_our_own_status_write_is_not_a_change() -> None:
    ctl = controller()
    assert ctl.job_changed(job())  # never reconciled: yes
    written = JobStatus(phase="Running").wire()
    ctl.records["u1"] = JobRecord(generation=1, written=JobStatus(), written_wire=written)
    assert not ctl.job_changed(job(status=written))  # our write, coming back
    assert ctl.job_changed(job(generation=2, status=written))  # the spec changed
    assert ctl.job_changed(job(status={"phase": "Failed"}))  # someone else wrote status


def pod(phase: str = "Pending", ready: bool = False, resource_version: str = "1") -> Any:
    return {
        "metadata": {"name": "j-node-0", "uid": "p1", "resourceVersion": resource_version,
                     "labels": {naming.LABEL_ROLE: naming.ROLE_NODE,
                                naming.LABEL_NODE_INDEX: "0"}},
        "spec": {"containers": []},
        "status": {"phase": phase,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }  # fmt: skip


def test_a_pod_event_that_changes_nothing_a_plan_sees_is_dropped() -> None:
    ctl = controller()
    ctl.records["u1"] = JobRecord()
    assert ctl.pod_changed("u1", "ADDED", pod())
    assert not ctl.pod_changed("u1", "MODIFIED", pod(resource_version="2"))  # a heartbeat
    assert ctl.pod_changed("u1", "MODIFIED", pod("Running"))
    assert ctl.pod_changed("u1", "MODIFIED", pod("Running", ready=True))
    assert ctl.pod_changed("u1", "DELETED", pod("Running", ready=True))
    assert ctl.pod_changed("other-job", "MODIFIED", pod())  # a job not seen yet: yes


def test_a_deleted_pod_that_says_what_it_saved_is_kept_for_the_next_plan() -> None:
    """Deleted with the step its SIGTERM saved in its termination message: the pod leaves the
    index before a batched reconcile runs, so its last state must outlive it."""
    ctl = controller()
    ctl.records["u1"] = JobRecord()
    stopped = pod("Failed")
    stopped["status"]["containerStatuses"] = [{"name": naming.TRAINER_CONTAINER, "state": {
        "terminated": {"exitCode": naming.EXIT_TERMINATED,
                       "message": "pretrain_checkpoint_last_step 8\n"}}}]  # fmt: skip
    assert ctl.pod_changed("u1", "DELETED", stopped)
    [kept] = ctl.records["u1"].gone.values()
    assert (kept.exit_code, kept.message) == (
        naming.EXIT_TERMINATED,
        "pretrain_checkpoint_last_step 8",
    )
    ctl.records["u1"].gone.clear()
    assert ctl.pod_changed("u1", "DELETED", pod("Running"))
    assert not ctl.records["u1"].gone  # nothing a plan could not see: not kept


@pytest.mark.parametrize("seconds", [30.0, 5.0])
def test_a_running_job_comes_back_for_its_progress_and_a_finished_one_does_not(
    seconds: float,
) -> None:
    ctl = Controller(cast(kube.Api, None), Settings(progress_seconds=seconds), _no_event)
    record = JobRecord(scraped_at=time.monotonic())
    running = ctl._next_look(record, JobStatus(phase="Running"))
    assert running is not None
    assert seconds - 1 < running <= seconds
    assert ctl._next_look(record, JobStatus(phase="Succeeded")) is None


def test_a_finished_workers_report_counts_as_a_scrape_so_no_look_is_due_at_once() -> None:
    """A node pod's trainer has exited 0 (its termination message holds the last metrics) and
    the phase is not Succeeded yet: the next look waits a progress interval, it is not due
    at once on every reconcile."""
    from pretrain_operator.observe import PodState

    ctl = Controller(cast(kube.Api, None), Settings(progress_seconds=5.0), _no_event)
    record = JobRecord(scraped_at=time.monotonic() - 60)  # the last scrape, long ago
    finished = PodState("j-node-0", "p0", naming.ROLE_NODE, 0, "Running", False, False,
                        exit_code=0, message="pretrain_train_step 24")  # fmt: skip
    report = run(lambda: ctl._metrics(record, [finished]))
    assert report is not None
    assert report.step == 24
    look = ctl._next_look(record, JobStatus(phase="Running"))
    assert look is not None
    assert look > 4


def test_a_key_requeued_at_once_by_a_reconcile_that_never_waits_does_not_starve_the_loop() -> None:
    """A reconcile that makes no API call never suspends: the worker must still let the rest
    of the event loop (the watches that fill the indexes) run between two of its keys."""

    async def scenario() -> int:
        queue: WorkQueue[str] = WorkQueue("fairness")
        calls = 0

        async def reconcile(_: str) -> Outcome:
            nonlocal calls
            calls += 1
            if calls > 10_000:  # starved: stop, so the test fails rather than hangs
                queue.shut_down()
            return Outcome(requeue_after=0)

        workers = start_workers(queue, 1, reconcile, logging.getLogger("test"))
        queue.add("job")
        await asyncio.sleep(0.01)  # only runs again if the worker yields
        seen = calls
        queue.shut_down()
        await asyncio.gather(*workers)
        return seen

    assert run(scenario) < 10_000
