"""The recovery benchmark's breakdown of one kill into phases, from the timeline it observes:
the pods' watch events and the trainer's metrics.jsonl."""

from __future__ import annotations

from typing import Any

import pytest

from bench.recovery import PHASES, PodEvent, breakdown, first_step_after

KILLED = 100.0


def event(time: float, uid: str, phase: str = "Running", running: bool = True,
          kind: str = "MODIFIED", deleting: bool = False) -> PodEvent:  # fmt: skip
    return PodEvent(time, kind, "job-node-1", uid, phase, running, deleting)


def restart(started: float) -> dict[str, Any]:
    times = {"process_started": started, "restore_started": started + 5,
             "restored": started + 6, "loop_started": started + 6.5}  # fmt: skip
    return {"step": 10, "restart": {"world_size": 2, **times}}


EVENTS = [
    event(50.0, "older", kind="ADDED"),  # the replacement of an earlier kill, killed since
    event(90.0, "old"),
    event(100.5, "old", phase="Failed", running=False),
    event(101.0, "old", phase="Failed", running=False, deleting=True),
    event(102.0, "new", phase="Pending", running=False, kind="ADDED"),
    event(103.0, "new"),
    event(150.0, "new", kind="ADDED"),  # a watch restarted replays what it had sent
]
RECORDS: list[dict[str, Any]] = [
    {"step": 11, "loss": 2.0, "time": 99.0},
    {"step": 12, "loss": 1.9, "time": 100.2},  # in flight when the pod was killed
    restart(104.0),  # a round that failed before its first step
    restart(110.0),
    {"step": 11, "loss": 2.0, "time": 118.0},
    {"step": 12, "loss": 1.9, "time": 119.0},
]


def test_each_phase_runs_from_the_end_of_the_one_before() -> None:
    phases = breakdown(KILLED, "job-node-1", "old", EVENTS, RECORDS)
    assert list(phases) == [*PHASES, "total"]
    assert phases == pytest.approx({
        "detection": 0.5, "replacement": 1.5, "pod start": 1.0, "rendezvous": 7.0,
        "worker start-up": 5.0, "checkpoint load": 1.0, "first step": 2.0, "total": 18.0,
    })  # fmt: skip
    assert sum(phases[name] for name in PHASES) == pytest.approx(phases["total"])


def test_the_first_step_after_a_kill_is_one_the_new_workers_completed() -> None:
    assert first_step_after(KILLED, RECORDS[:4]) is None  # restarted, no step yet
    found = first_step_after(KILLED, RECORDS)
    assert found is not None
    assert found[0]["process_started"] == 110.0
    assert found[1] == 118.0
