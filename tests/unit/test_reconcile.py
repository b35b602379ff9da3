"""The phase machine and the children of a job, as pure functions: no cluster needed."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pretrain_operator import children, naming
from pretrain_operator.api import (
    FINETUNE_JOB,
    PRETRAIN_JOB,
    FinetuneJobSpec,
    JobStatus,
    Phase,
    PretrainJobSpec,
)
from pretrain_operator.api.pretrain import FAMILY_OF_OBJECTIVE
from pretrain_operator.api.status import Backoff
from pretrain_operator.children import Job
from pretrain_operator.observe import (
    BaseJobState,
    PodState,
    parse_metrics,
    pod_state,
    with_saved_checkpoints,
)
from pretrain_operator.reconcile import backoff_delay, plan

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)
EVICTED = "EvictionByEvictionAPI: Eviction API: evicting"  # a DisruptionTarget condition


def pretrain(**spec: Any) -> Job:
    body = {
        "objective": {"type": "CausalLM"},
        "model": {"family": "gpt"},
        "data": {"sources": [{"uri": "file:///data"}]},
        "training": {"maxSteps": 100, "globalBatchSize": 64, "microBatchSize": 8},
        "replicas": {"min": 2, "max": 4},
        "resources": {"accelerator": {"type": "nvidia.com/gpu", "count": 8}},
        **spec,
    }
    return Job(PRETRAIN_JOB, "j", "ns", "uid-1", PretrainJobSpec.model_validate(body), "img")


def node(index: int, phase: str = "Running", ready: bool = True, **extra: Any) -> PodState:
    fields: dict[str, Any] = {
        "name": f"j-node-{index}", "uid": f"pod-{index}", "role": naming.ROLE_NODE,
        "index": index, "phase": phase, "ready": ready, "deleting": False, "node": "n",
        "ip": f"127.0.0.{index + 2}",
    }  # fmt: skip
    return PodState(**{**fields, **extra})


def rendezvous(phase: str = "Running", **extra: Any) -> PodState:
    fields: dict[str, Any] = {"name": "j-rdzv", "uid": "rdzv", "role": naming.ROLE_RENDEZVOUS,
                              "index": None, "phase": phase, "ready": phase == "Running",
                              "deleting": False}  # fmt: skip
    return PodState(**{**fields, **extra})


def seconds(n: float) -> datetime.datetime:
    return NOW + datetime.timedelta(seconds=n)


def running(uids: int = 4, **status: Any) -> JobStatus:
    """A job Running since NOW with node pods 0..uids-1 created by the operator."""
    job = JobStatus(pod_uids={str(i): f"pod-{i}" for i in range(uids)}, **status)
    return plan(pretrain(), job, 1, [*(node(i) for i in range(uids)), rendezvous()], NOW).status


def created_names(result: Any) -> list[str]:
    return [m["metadata"]["name"] for m in result.create]


def test_a_new_job_creates_the_rendezvous_and_max_node_pods() -> None:
    result = plan(pretrain(), JobStatus(), 1, [], NOW)
    assert created_names(result) == ["j-rdzv", "j-node-0", "j-node-1", "j-node-2", "j-node-3"]
    assert result.status.phase == Phase.PENDING
    assert result.status.selector == "pretrain.dev/job-name=j,pretrain.dev/job-kind=PretrainJob," \
        "pretrain.dev/role=node"  # fmt: skip
    assert result.status.observed_generation == 1


def test_running_once_min_nodes_are_ready_with_the_others_pending() -> None:
    unschedulable = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    pods = [node(0), node(1), node(2, "Pending", False, node="", unschedulable=unschedulable),
            rendezvous()]  # fmt: skip
    result = plan(pretrain(), JobStatus(), 1, pods, NOW)
    status = result.status
    assert status.phase == Phase.RUNNING
    assert status.start_time == "2026-11-27T12:00:00Z"
    assert status.world_size == 16
    assert status.nodes == "2/4"
    assert created_names(result) == ["j-node-3"]
    scheduled = next(c for c in status.conditions if c.type == "Scheduled")
    assert (scheduled.status, scheduled.message) == ("False", unschedulable)


def test_pending_carries_the_scheduler_reason() -> None:
    message = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    pods = [node(i, "Pending", False, node="", unschedulable=message) for i in range(4)]
    status = plan(pretrain(), JobStatus(), 1, [*pods, rendezvous()], NOW).status
    assert status.phase == Phase.PENDING
    running = next(c for c in status.conditions if c.type == "Running")
    assert message in running.message


def test_a_failed_pod_restarts_every_node_pod_and_the_rendezvous_as_one_restart() -> None:
    """torchrun that fails closes its rendezvous for good: the others cannot go on in it, and a
    replacement pod alone would fail with RendezvousClosedError forever."""
    status = JobStatus(phase=Phase.RUNNING, pod_uids={str(i): f"pod-{i}" for i in range(4)})
    failed = node(1, "Failed", False, exit_code=1, reason="Error")
    result = plan(pretrain(), status, 1, [node(0), failed, node(2), node(3), rendezvous()], NOW)
    assert result.delete_pods == ["j-node-0", "j-node-1", "j-node-2", "j-node-3", "j-rdzv"]
    assert result.create == []
    assert result.status.restarts == 1
    assert result.status.phase == Phase.RESTARTING
    assert result.status.pod_uids == {str(i): "" for i in range(4)}
    assert [e.reason for e in result.events] == ["PodFailed", "Restarting"]
    assert "restarting all 4 node pods and the rendezvous in 10s" in result.events[0].message
    # The others fail too before they are gone (RendezvousClosedError): the same restart.
    leaving = [node(i, "Failed", False, deleting=True, exit_code=1) for i in (0, 2, 3)]
    going = plan(pretrain(), result.status, 1, [*leaving, rendezvous(deleting=True)], seconds(11))
    assert (going.status.restarts, going.create, going.events) == (1, [], [])
    # Nothing new starts while the closed store is still there, even after the backoff.
    store_left = plan(pretrain(), going.status, 1, [rendezvous(deleting=True)], seconds(12))
    assert store_left.create == []
    # All gone: a fresh store first, then the gang, not counted again.
    again = plan(pretrain(), store_left.status, 1, [], seconds(13))
    assert again.status.restarts == 1
    assert created_names(again) == ["j-rdzv", "j-node-0", "j-node-1", "j-node-2", "j-node-3"]


def test_a_pod_stuck_terminating_does_not_hold_a_lost_one_back() -> None:
    """Pods on an unreachable node may stay Terminating for long: a lost pod elsewhere is still
    recreated at once (only a closed store, after a restart, holds new pods back)."""
    status = JobStatus(phase=Phase.RUNNING, pod_uids={str(i): f"pod-{i}" for i in range(4)})
    stuck = node(1, deleting=True, ready=False)
    result = plan(pretrain(), status, 1, [node(0), stuck, node(3), rendezvous()], NOW)
    assert created_names(result) == ["j-node-2"]


def test_a_vanished_pod_counts_as_a_restart() -> None:
    status = JobStatus(phase=Phase.RUNNING, pod_uids={str(i): f"pod-{i}" for i in range(4)})
    result = plan(pretrain(), status, 1, [node(0), node(1), node(3), rendezvous()], NOW)
    assert result.status.restarts == 1
    assert created_names(result) == ["j-node-2"]
    assert "disappeared" in result.events[0].message


def test_restart_budget_exhausted_fails_naming_pod_and_exit_code() -> None:
    status = JobStatus(restarts=10, pod_uids={"0": "pod-0"})
    failed = node(0, "Failed", False, exit_code=137, reason="OOMKilled")
    result = plan(pretrain(), status, 1, [failed, node(1), rendezvous()], NOW)
    assert result.status.phase == Phase.FAILED
    failure = next(c for c in result.status.conditions if c.type == "Failed")
    assert failure.reason == "RestartLimitExceeded"
    assert "j-node-0" in failure.message
    assert "exit code 137" in failure.message
    assert "j-node-1" in result.delete_pods


def test_bad_configuration_exit_fails_without_retry() -> None:
    failed = node(0, "Failed", False, exit_code=naming.EXIT_BAD_CONFIGURATION,
                  message="spec.data.sources[0].uri: no such file")  # fmt: skip
    result = plan(pretrain(), JobStatus(), 1, [failed, node(1), rendezvous()], NOW)
    assert result.status.phase == Phase.FAILED
    assert result.status.restarts == 0
    failure = next(c for c in result.status.conditions if c.type == "Failed")
    assert failure.reason == "InvalidConfiguration"
    assert "no such file" in failure.message


def test_scaling_down_removes_pods_without_counting_restarts() -> None:
    status = JobStatus(pod_uids={str(i): f"pod-{i}" for i in range(4)})
    job = pretrain(replicas={"min": 1, "max": 2})
    result = plan(job, status, 2, [node(i) for i in range(4)] + [rendezvous()], NOW)
    assert sorted(result.delete_pods) == ["j-node-2", "j-node-3"]
    assert result.status.restarts == 0
    assert result.status.replicas.desired == 2


def test_suspend_deletes_every_pod_and_is_not_a_failure() -> None:
    status = JobStatus(phase=Phase.RUNNING, pod_uids={"0": "pod-0", "1": "pod-1"})
    result = plan(pretrain(suspend=True), status, 2, [node(0), node(1), rendezvous()], NOW)
    assert sorted(result.delete_pods) == ["j-node-0", "j-node-1", "j-rdzv"]
    assert result.status.phase == Phase.SUSPENDED
    assert result.status.pod_uids == {}
    resumed = plan(pretrain(), result.status, 3, [], NOW)
    assert resumed.status.restarts == 0
    assert len(resumed.create) == 5


def test_pods_still_terminating_after_a_suspend_are_not_adopted_on_resume() -> None:
    status = JobStatus(phase=Phase.RUNNING, pod_uids={"0": "pod-0", "1": "pod-1"})
    suspended = plan(pretrain(suspend=True), status, 2, [node(0), node(1), rendezvous()], NOW)
    # Resumed before the operator's view shows the old pods gone: they are seen terminating.
    terminating = [node(0, deleting=True), node(1, deleting=True)]
    resumed = plan(pretrain(), suspended.status, 3, terminating, NOW)
    assert resumed.status.pod_uids == {}
    gone = plan(pretrain(), resumed.status, 3, [], NOW)
    assert gone.status.restarts == 0
    assert len(gone.create) == 5


def test_success_then_ttl() -> None:
    job = pretrain(ttlSecondsAfterFinished=60)
    done = plan(job, JobStatus(), 1, [node(0, "Succeeded", False), node(1), rendezvous()], NOW)
    assert done.status.phase == Phase.SUCCEEDED
    assert done.status.completion_time == "2026-11-27T12:00:00Z"
    assert "j-node-1" in done.delete_pods
    assert not done.delete_job
    waiting = plan(job, done.status, 1, [], NOW + datetime.timedelta(seconds=59))
    assert not waiting.delete_job
    assert waiting.requeue_after == 1  # comes back when the TTL expires, not on a timer
    later = plan(job, done.status, 1, [], NOW + datetime.timedelta(seconds=61))
    assert later.delete_job


def test_a_trainer_that_exited_0_finishes_the_job_before_the_kubelet_says_succeeded() -> None:
    """The kubelet writes the container's end, then (once the pod has stopped) the phase: the
    job is done at the first, and the finished pod is kept (its logs), not deleted."""
    finished = node(0, "Running", False, exit_code=0, reason="Completed")
    done = plan(pretrain(), running(2), 1, [finished, node(1), rendezvous()], NOW)
    assert done.status.phase == Phase.SUCCEEDED
    assert "j-node-0" not in done.delete_pods
    assert "j-node-1" in done.delete_pods  # still running: stopped, as at any success
    again = plan(pretrain(), done.status, 1, [finished, rendezvous()], seconds(1))
    assert "j-node-0" not in again.delete_pods


def test_a_finished_job_without_a_ttl_asks_for_no_further_look() -> None:
    done = plan(pretrain(), JobStatus(), 1, [node(0, "Succeeded", False), rendezvous()], NOW)
    assert plan(pretrain(), done.status, 1, [], seconds(30)).requeue_after is None


def test_a_spec_the_models_refuse_fails_the_job_naming_the_field_once() -> None:
    from pydantic import ValidationError

    from pretrain_operator.reconcile import invalid_spec

    with pytest.raises(ValidationError) as refused:
        PretrainJobSpec.model_validate(
            {**pretrain().spec.model_dump(by_alias=True), "objective": {"type": "Telepathy"}}
        )
    failed = invalid_spec(JobStatus(), 3, refused.value, NOW)
    assert failed.status.phase == Phase.FAILED
    condition = next(c for c in failed.status.conditions if c.type == "Failed")
    assert condition.reason == "InvalidSpec"
    assert condition.message.startswith("spec.objective")
    assert condition.observed_generation == 3
    assert [e.reason for e in failed.events] == ["InvalidSpec"]
    assert invalid_spec(failed.status, 3, refused.value, seconds(5)).events == []  # said once


def test_a_missing_optional_api_is_a_condition_and_the_job_trains_on() -> None:
    missing = ["spec.scheduling: scheduling.x-k8s.io/v1alpha1 PodGroup is not served; install it"]
    result = plan(pretrain(), JobStatus(), 1, [], NOW, missing_apis=missing)
    condition = next(c for c in result.status.conditions if c.type == "OptionalChildMissing")
    assert (condition.status, condition.message) == ("True", missing[0])
    assert len(result.create) == 5


def finetune(base: dict[str, Any]) -> Job:
    spec = FinetuneJobSpec.model_validate(
        {
            "base": base,
            "task": {"type": "SequenceClassification", "numLabels": 2},
            "data": {"train": {"uri": "file:///train.jsonl"}},
            "training": {"maxSteps": 10, "globalBatchSize": 8, "microBatchSize": 8},
        }
    )
    return Job(FINETUNE_JOB, "f", "ns", "uid-2", spec, "img")


@pytest.mark.parametrize(
    ("base", "phase", "reason"),
    [
        (BaseJobState(found=False), Phase.PENDING, "BaseNotFound"),
        (BaseJobState(found=True, phase="Running"), Phase.PENDING, "BaseNotFinished"),
        (BaseJobState(found=True, phase="Failed"), Phase.FAILED, "BaseFailed"),
        (BaseJobState(found=True, phase="Succeeded"), Phase.FAILED, "BaseHasNoCheckpoint"),
    ],
)
def test_finetune_waits_for_or_fails_on_its_base(
    base: BaseJobState, phase: Phase, reason: str
) -> None:
    result = plan(finetune({"pretrainJob": "p"}), JobStatus(), 1, [], NOW, base=base)
    assert result.status.phase == phase
    waiting = next(c for c in result.status.conditions if c.type == "WaitingForBase")
    assert waiting.reason == reason
    assert result.create == []


def test_finetune_starts_from_the_resolved_checkpoint() -> None:
    base = BaseJobState(found=True, phase="Succeeded", checkpoint_uri="pvc://c/p/step-000000010")
    result = plan(finetune({"pretrainJob": "p"}), JobStatus(), 1, [], NOW, base=base)
    assert result.status.base is not None
    assert result.status.base.resolved_checkpoint == "pvc://c/p/step-000000010"
    assert created_names(result) == ["f-rdzv", "f-node-0"]


def test_node_pods_satisfy_the_restricted_profile_and_mount_the_config() -> None:
    pod = children.node_pod(pretrain(), 0)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "config", "mountPath": "/etc/pretrain", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert pod["metadata"]["ownerReferences"][0]["controller"] is True
    assert pod["spec"]["hostname"] == "j-node-0"
    assert pod["spec"]["subdomain"] == "j"


def test_tpu_pods_select_the_slice_and_run_one_process_per_node() -> None:
    tpu = {"type": "google.com/tpu", "count": 4, "topology": "2x2",
           "tpuAccelerator": "tpu-v5-lite-podslice"}  # fmt: skip
    job = pretrain(resources={"accelerator": tpu})
    pod = children.node_pod(job, 0)
    assert pod["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2",
    }
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"google.com/tpu": "4"}
    assert "--nproc-per-node=1" in pod["spec"]["containers"][0]["command"]


def test_node_pods_run_torchrun_under_the_supervisor_with_the_grace_period() -> None:
    pod = children.node_pod(pretrain(), 0)
    command = pod["spec"]["containers"][0]["command"]
    assert command[:5] == ["python", "-m", "pretrain_trainer.node", "--grace-seconds=120", "--"]
    assert command[5:] == children.torchrun_arguments(pretrain())
    assert "--rdzv-endpoint=j-rdzv:29400" in command
    assert pod["spec"]["terminationGracePeriodSeconds"] == 120
    longer = children.node_pod(pretrain(template={"terminationGracePeriodSeconds": 600}), 0)
    assert longer["spec"]["terminationGracePeriodSeconds"] == 600
    assert "--grace-seconds=600" in longer["spec"]["containers"][0]["command"]


def test_optional_children_gang_queue_and_budget() -> None:
    job = pretrain(scheduling={"gang": True, "queueName": "team-a", "disruptionBudget": True})
    kinds = [c["kind"] for c in children.static_children(job)]
    assert kinds == ["ConfigMap", "Service", "Service", "PodDisruptionBudget",
                     "PodDisruptionBudget", "PodGroup"]  # fmt: skip
    labels = children.node_pod(job, 1)["metadata"]["labels"]
    # The job's Workload is what Kueue queues (queueing.py); a label on the pods would have
    # Kueue's pod integration queue each pod again.
    assert not [key for key in labels if key.startswith("kueue.x-k8s.io/")]
    assert labels["scheduling.x-k8s.io/pod-group"] == "j"


def test_pod_state_reads_exit_codes_and_scheduler_messages() -> None:
    state = pod_state(
        {
            "metadata": {"name": "j-node-2", "uid": "u", "labels": {
                naming.LABEL_ROLE: "node", naming.LABEL_NODE_INDEX: "2"}},
            "spec": {},
            "status": {
                "phase": "Failed",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                    "exitCode": 78, "reason": "Error", "message": "bad spec"}}}],
            },
        }
    )  # fmt: skip
    assert (state.index, state.exit_code, state.message, state.failed) == (2, 78, "bad spec", True)


def test_the_checkpoint_a_pod_saved_on_sigterm_reaches_the_status() -> None:
    """The pod is gone with its endpoint; its termination message says which step it saved, and
    the workers that took over report no checkpoint until they write one."""
    stopped = parse_metrics("pretrain_train_step 37\npretrain_checkpoint_last_step 37\n"
                            "pretrain_tokens_total 14208\npretrain_train_loss 5.25\n")  # fmt: skip
    live = parse_metrics("pretrain_train_step 39\npretrain_train_loss 5.0\n")
    merged = with_saved_checkpoints(live, [stopped])
    assert merged is not None
    assert (merged.step, merged.loss, merged.checkpoint_step) == (39, 5.0, 37)
    assert with_saved_checkpoints(None, [stopped]) == stopped
    newer = parse_metrics("pretrain_train_step 60\npretrain_checkpoint_last_step 50\n")
    assert with_saved_checkpoints(newer, [stopped]) == newer
    assert with_saved_checkpoints(live, [parse_metrics("")]) == live
    storage = {"storage": {"persistentVolumeClaim": "ckpt", "path": "run"}}
    result = plan(pretrain(checkpoint=storage), JobStatus(), 1, [node(0), node(1), rendezvous()],
                  NOW, metrics=merged)  # fmt: skip
    checkpoint = result.status.checkpoint
    assert (checkpoint.step, checkpoint.uri) == (37, "pvc://ckpt/run/step-000000037")


def test_parse_metrics_reads_the_gauges_and_drops_nan() -> None:
    text = (
        "# HELP pretrain_train_step Optimizer steps.\n# TYPE pretrain_train_step gauge\n"
        'pretrain_train_step{namespace="ns",job="j",kind="PretrainJob"} 42.0\n'
        "pretrain_train_loss NaN\npretrain_tokens_total 1.5e+06\nunrelated_metric 7\n"
    )
    metrics = parse_metrics(text)
    assert (metrics.step, metrics.loss, metrics.tokens) == (42, None, 1_500_000)


def test_parse_metrics_reads_the_evaluation_scores_by_name() -> None:
    labels = 'namespace="ns",job="f",kind="FinetuneJob"'
    text = (
        "# TYPE pretrain_eval_metric gauge\n"
        f'pretrain_eval_metric{{{labels},name="accuracy"}} 0.875\n'
        f'pretrain_eval_metric{{{labels},name="macroF1"}} 0.81\n'
        f'pretrain_eval_metric{{{labels},name="loss"}} NaN\n'
        f"pretrain_eval_step{{{labels}}} 40.0\npretrain_train_step{{{labels}}} 43.0\n"
    )
    metrics = parse_metrics(text)
    assert metrics.evaluation == {"accuracy": 0.875, "macroF1": 0.81}
    assert (metrics.evaluation_step, metrics.step) == (40, 43)


def test_finetune_status_carries_the_latest_evaluation() -> None:
    base = BaseJobState(found=True, phase="Succeeded", checkpoint_uri="pvc://c/p/step-000000010")
    job = finetune({"pretrainJob": "p"})
    first = plan(job, JobStatus(), 1, [node(0), rendezvous()], NOW, base=base)
    assert first.status.evaluation is not None
    assert (first.status.evaluation.step, first.status.evaluation.metrics) == (0, {})
    metrics = parse_metrics(
        'pretrain_train_step 12\npretrain_eval_step 10\npretrain_eval_metric{name="accuracy"} 0.5\n'
    )
    later = plan(job, first.status, 1, [node(0), rendezvous()], NOW, metrics=metrics, base=base)
    assert later.status.evaluation is not None
    assert later.status.evaluation.model_dump() == {"step": 10, "metrics": {"accuracy": 0.5}}
    # a scrape without evaluation (the pod restarted) keeps the last one
    again = plan(job, later.status, 1, [node(0), rendezvous()], NOW,
                 metrics=parse_metrics("pretrain_train_step 13\n"), base=base)  # fmt: skip
    assert again.status.evaluation == later.status.evaluation


# ---- property: the planner never raises and keeps its invariants, whatever it observes ----

objectives = st.sampled_from(sorted(FAMILY_OF_OBJECTIVE))
pod_phases = st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Unknown"])


@st.composite
def jobs_and_observations(draw: st.DrawFn) -> tuple[Job, JobStatus, list[PodState]]:
    objective = draw(objectives)
    low = draw(st.integers(1, 6))
    high = draw(st.integers(low, 8))
    spec: dict[str, Any] = {
        "objective": {"type": objective.value},
        "model": {"family": FAMILY_OF_OBJECTIVE[objective].value},
        "replicas": {"min": low, "max": high},
        "suspend": draw(st.booleans()),
        "failurePolicy": {"maxRestarts": draw(st.integers(0, 5))},
        "resources": draw(st.sampled_from([
            {}, {"accelerator": {"type": "nvidia.com/gpu", "count": 8}},
            {"accelerator": {"type": "google.com/tpu", "count": 4, "topology": "2x2"}}])),
    }  # fmt: skip
    job = pretrain(**spec)
    pods = [
        node(i, draw(pod_phases), draw(st.booleans()), deleting=draw(st.booleans()),
             exit_code=draw(st.none() | st.integers(0, 255)), uid=draw(st.sampled_from(
                 [f"pod-{i}", f"other-{i}"])), disruption=draw(st.sampled_from(["", EVICTED])),
             bounds=draw(st.sampled_from(["", f"{low}:{high}", "1:9"])))
        for i in draw(st.sets(st.integers(0, 9), max_size=10))
    ]  # fmt: skip
    if draw(st.booleans()):
        pods.append(rendezvous(draw(pod_phases)))
    backoff = Backoff(failures=draw(st.integers(0, 20)), delay_seconds=10,
                      recreate_after=draw(st.sampled_from([None, "2026-11-27T11:59:00Z",
                                                           "2026-11-27T12:00:30Z"])),
                      indexes=draw(st.lists(st.integers(0, 9), max_size=3)))  # fmt: skip
    status = JobStatus(
        phase=draw(st.sampled_from(list(Phase))),
        restarts=draw(st.integers(0, 6)),
        disruptions=draw(st.integers(0, 3)),
        pod_uids={str(i): draw(st.sampled_from(["", f"pod-{i}"])) for i in range(draw(
            st.integers(0, 9)))},
        backoff=draw(st.none() | st.just(backoff)),
    )  # fmt: skip
    return job, status, pods


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs_and_observations())
def test_planner_never_raises_and_keeps_its_invariants(
    case: tuple[Job, JobStatus, list[PodState]],
) -> None:
    job, status, pods = case
    result = plan(job, status, 1, pods, NOW)
    names = created_names(result)
    assert len(names) == len(set(names))  # never two creations of one pod
    observed = {p.name for p in pods}
    assert not set(names) & observed  # never create what exists
    for manifest in result.create:
        index = manifest["metadata"]["labels"].get(naming.LABEL_NODE_INDEX)
        assert index is None or int(index) < job.spec.replicas.max
    assert result.status.restarts >= status.restarts
    assert result.status.disruptions >= status.disruptions
    assert len(result.delete_pods) == len(set(result.delete_pods))  # never two deletions of one
    assert result.requeue_after is None or result.requeue_after >= 0
    wanted = f"{job.spec.replicas.min}:{job.spec.replicas.max}"
    outdated = [p for p in pods if p.role == naming.ROLE_NODE and p.bounds not in {"", wanted}]
    node_pods = [m for m in result.create if m["metadata"]["labels"][naming.LABEL_ROLE] == "node"]
    if outdated:  # a resize starts no pod before every old one is gone
        assert node_pods == []
    for manifest in node_pods:
        assert manifest["metadata"]["annotations"][naming.ANNOTATION_REPLICAS] == wanted
    assert result.status.replicas.ready <= job.spec.replicas.max
    if job.spec.suspend and status.phase not in {Phase.SUCCEEDED, Phase.FAILED}:
        assert result.create == []
    JobStatus.model_validate(result.status.wire())  # what is written reads back


def test_node_pods_mount_the_claims_their_pvc_uris_name_read_only() -> None:
    data = {"sources": [{"uri": "pvc://corpus/a.jsonl"}, {"uri": "pvc://corpus/b.jsonl"},
                        {"uri": "pvc://images/digits", "format": "imagefolder"},
                        {"uri": "s3://bucket/c.jsonl"}]}  # fmt: skip
    pod = children.node_pod(pretrain(data=data), 0)
    container = pod["spec"]["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for claim in ("corpus", "images"):
        mount = mounts[f"/mnt/pvc/{claim}"]  # where the trainer resolves pvc://CLAIM/...
        assert mount["readOnly"] is True
        source = volumes[mount["name"]]["persistentVolumeClaim"]
        assert source == {"claimName": claim, "readOnly": True}
    assert sum(1 for path in mounts if path.startswith("/mnt/pvc/")) == 2


def test_a_claim_the_template_already_mounts_is_left_to_the_template() -> None:
    template = {"volumes": [{"name": "mine", "persistentVolumeClaim": {"claimName": "corpus"}}],
                "volumeMounts": [{"name": "mine", "mountPath": "/mnt/pvc/corpus"}]}  # fmt: skip
    job = pretrain(data={"sources": [{"uri": "pvc://corpus/a.jsonl"}]}, template=template)
    container = children.node_pod(job, 0)["spec"]["containers"][0]
    paths = [m["mountPath"] for m in container["volumeMounts"]]
    assert paths.count("/mnt/pvc/corpus") == 1


# ---- backoff between recreations of failed pods ----


def test_the_backoff_doubles_per_consecutive_failure_up_to_five_minutes() -> None:
    assert [backoff_delay(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 300, 300, 300]
    assert backoff_delay(10_000) == 300


def test_a_failed_pod_is_recreated_only_once_its_delay_has_passed() -> None:
    failed = node(1, "Failed", False, exit_code=1, reason="Error")
    result = plan(pretrain(), running(), 1, [node(0), failed, node(2), node(3), rendezvous()], NOW)
    assert result.events[0].message.endswith("in 10s, from the last checkpoint (restart 1)")
    assert result.requeue_after == 10  # the controller comes back when the delay ends
    waiting = plan(pretrain(), result.status, 1, [], seconds(4))  # the old pods are gone
    assert created_names(waiting) == ["j-rdzv"]  # the fresh store need not wait
    assert waiting.requeue_after == 6
    assert waiting.status.phase == Phase.RESTARTING
    due = plan(pretrain(), waiting.status, 1, [rendezvous()], seconds(10))
    assert created_names(due) == [f"j-node-{i}" for i in range(4)]
    assert due.requeue_after is None
    assert due.status.restarts == 1


def fail_and_recover(status: JobStatus, at: datetime.datetime) -> tuple[JobStatus, str, float]:
    """Node 0 of a one-node job fails at `at`; return the status once it is back, the failure
    message and how long after the failure it was recreated."""
    job = pretrain(replicas={"min": 1, "max": 1})
    failed = node(0, "Failed", False, exit_code=1, reason="Error")
    result = plan(job, status, 1, [failed, rendezvous()], at)
    message = result.events[0].message
    status = plan(job, result.status, 1, [rendezvous()], at).status  # the failed pod is gone
    waited = 0.0
    while True:  # the controller's requeue brings it back
        view = plan(job, status, 1, [rendezvous()], at + datetime.timedelta(seconds=waited))
        if view.create:
            break
        assert view.requeue_after is not None
        assert view.requeue_after > 0
        waited += view.requeue_after
        status = view.status
    status = view.status
    back = at + datetime.timedelta(seconds=waited)
    status = plan(job, status, 1, [node(0, uid="pod-new"), rendezvous()], back).status
    assert status.phase == Phase.RUNNING
    return status, message, waited


def test_consecutive_failures_wait_ever_longer_until_healthy_training_resets_the_delay() -> None:
    job = pretrain(replicas={"min": 1, "max": 1})
    status = plan(job, JobStatus(pod_uids={"0": "pod-0"}), 1, [node(0), rendezvous()], NOW).status
    delays: list[int] = []
    at = NOW
    for _ in range(7):
        status, message, waited = fail_and_recover(status, at)
        assert message.endswith(f"in {int(waited)}s, from the last checkpoint "
                                f"(restart {len(delays) + 1})")  # fmt: skip
        delays.append(int(waited))
        at += datetime.timedelta(seconds=waited + 60)  # each pod trains a minute, then fails
    assert delays == [10, 20, 40, 80, 160, 300, 300]
    assert status.backoff is not None
    assert status.backoff.failures == 7

    # Ten minutes of training without a failure: the next one waits 10 s again.
    nine = plan(job, status, 1, [node(0, uid="pod-new"), rendezvous()], at + datetime.timedelta(
        minutes=8)).status  # fmt: skip
    assert nine.backoff is not None  # 9 min since it came back: not yet
    calm = plan(job, status, 1, [node(0, uid="pod-new"), rendezvous()], at + datetime.timedelta(
        minutes=10)).status  # fmt: skip
    assert calm.backoff is None
    _, message, waited = fail_and_recover(calm, at + datetime.timedelta(minutes=11))
    assert (waited, message.endswith("in 10s, from the last checkpoint (restart 8)")) == (10, True)


def test_pods_failing_together_are_one_restart_with_one_delay() -> None:
    failed = {i: node(i, "Failed", False, exit_code=1, reason="Error") for i in range(4)}
    first = plan(pretrain(), running(), 1, [failed[0], node(1), node(2), node(3), rendezvous()],
                 NOW)  # fmt: skip
    # The other ranks crash a second later (one NCCL error takes the whole group down), on
    # their way out.
    others = [node(i, "Failed", False, deleting=True, exit_code=1) for i in (1, 2, 3)]
    rest = plan(pretrain(), first.status, 1, [*others, rendezvous(deleting=True)], seconds(1))
    assert [e.reason for e in rest.events] == []
    assert rest.status.restarts == 1
    assert rest.status.backoff is not None
    assert rest.status.backoff.failures == 1
    due = plan(pretrain(), rest.status, 1, [rendezvous()], seconds(10))
    assert created_names(due) == [f"j-node-{i}" for i in range(4)]


def test_the_backoff_lives_in_status_so_a_restarted_operator_keeps_it() -> None:
    failed = node(1, "Failed", False, exit_code=1, reason="Error")
    result = plan(pretrain(), running(), 1, [node(0), failed, node(2), node(3), rendezvous()], NOW)
    written = result.status.wire()
    assert written["backoff"] == {
        "failures": 1, "delaySeconds": 10, "recreateAfter": "2026-11-27T12:00:10Z",
        "indexes": [0, 1, 2, 3],
    }  # fmt: skip
    read_back = JobStatus.model_validate(written)
    store = [rendezvous()]
    assert created_names(plan(pretrain(), read_back, 1, store, seconds(9))) == []
    assert len(plan(pretrain(), read_back, 1, store, seconds(10)).create) == 4


def test_the_first_creation_and_a_resume_from_suspend_wait_for_nothing() -> None:
    assert len(plan(pretrain(), JobStatus(), 1, [], NOW).create) == 5
    failed = node(1, "Failed", False, exit_code=1, reason="Error")
    result = plan(pretrain(), running(), 1, [node(0), failed, node(2), node(3), rendezvous()], NOW)
    suspended = plan(pretrain(suspend=True), result.status, 2, [], NOW).status
    assert suspended.backoff is None
    assert len(plan(pretrain(), suspended, 3, [], seconds(1)).create) == 5


# ---- disruptions are not failures ----


@pytest.mark.parametrize(
    "seen",
    [
        pytest.param(node(1, deleting=True, disruption=EVICTED), id="terminating"),
        pytest.param(node(1, "Failed", False, exit_code=137, reason="Evicted",
                          disruption="TerminationByKubelet: memory pressure"), id="failed"),
        pytest.param(node(1, "Failed", False, deleting=True, exit_code=143,
                          disruption="PreemptionByScheduler: preempted by a higher priority"),
                     id="failed-while-terminating"),
    ],
)  # fmt: skip
def test_a_disrupted_pod_is_counted_as_a_disruption_and_recreated_at_once(seen: PodState) -> None:
    job = pretrain(failurePolicy={"maxRestarts": 0})  # one restart would fail the job
    result = plan(job, running(), 1, [node(0), seen, node(2), node(3), rendezvous()], NOW)
    assert (result.status.disruptions, result.status.restarts) == (1, 0)
    assert result.status.phase == Phase.RUNNING
    (event,) = result.events
    assert event.reason == "PodDisrupted"
    assert "j-node-1" in event.message
    assert seen.disruption in event.message
    assert result.delete_pods == ([] if seen.deleting else ["j-node-1"])
    # Seen again, then gone: counted once, recreated without a backoff, still no restart.
    again = plan(job, result.status, 1, [node(0), seen, node(2), node(3), rendezvous()], NOW)
    assert (again.status.disruptions, again.events) == (1, [])
    gone = plan(job, again.status, 1, [node(0), node(2), node(3), rendezvous()], NOW)
    assert created_names(gone) == ["j-node-1"]
    assert (gone.status.disruptions, gone.status.restarts, gone.events) == (1, 0, [])
    assert gone.status.phase == Phase.RUNNING


def test_a_pod_evicted_and_deleted_before_it_was_seen_terminating_is_a_disruption() -> None:
    last = node(1, deleting=True, disruption="DeletionByPodGC: node n was deleted")
    others = [node(0), node(2), node(3), rendezvous()]
    result = plan(pretrain(), running(), 1, others, NOW, gone=[last])
    assert (result.status.disruptions, result.status.restarts) == (1, 0)
    assert created_names(result) == ["j-node-1"]
    assert "DeletionByPodGC" in result.events[0].message
    # A deletion event of an older pod of that index is not this pod's.
    older = node(1, uid="pod-before", deleting=True, disruption=EVICTED)
    lost = plan(pretrain(), running(), 1, others, NOW, gone=[older])
    assert (lost.status.disruptions, lost.status.restarts) == (0, 1)


def test_a_pod_that_vanishes_without_a_disruption_condition_is_still_a_restart() -> None:
    result = plan(pretrain(), running(), 1, [node(0), node(2), node(3), rendezvous()], NOW)
    assert (result.status.restarts, result.status.disruptions) == (1, 0)
    assert created_names(result) == ["j-node-1"]  # a loss is not a crash loop: no backoff


def test_pod_state_reads_the_disruption_condition() -> None:
    def observed(conditions: list[dict[str, str]]) -> PodState:
        labels = {naming.LABEL_ROLE: "node", naming.LABEL_NODE_INDEX: "0"}
        metadata = {"name": "j-node-0", "labels": labels, "deletionTimestamp": NOW.isoformat()}
        return pod_state({"metadata": metadata,
                          "status": {"phase": "Running", "conditions": conditions}})  # fmt: skip

    evicted = observed([{"type": "DisruptionTarget", "status": "True",
                         "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"},
                        {"type": "Ready", "status": "True"}])  # fmt: skip
    assert (evicted.disrupted, evicted.disruption, evicted.deleting) == (True, EVICTED, True)
    assert not observed([{"type": "DisruptionTarget", "status": "False"}]).disrupted
    assert not observed([]).disrupted


# ---- the rendezvous pod ----


@pytest.mark.parametrize("phase", ["Failed", "Succeeded"])
def test_a_lost_rendezvous_pod_is_recreated_alone(phase: str) -> None:
    nodes = [node(i) for i in range(4)]
    result = plan(pretrain(), running(), 1, [*nodes, rendezvous(phase)], NOW)
    assert result.delete_pods == ["j-rdzv"]
    assert result.create == []
    gone = plan(pretrain(), result.status, 1, nodes, NOW)
    assert created_names(gone) == ["j-rdzv"]
    assert gone.delete_pods == []
    assert (gone.status.restarts, gone.status.disruptions, gone.status.phase) == (
        0, 0, Phase.RUNNING)  # fmt: skip


def test_an_evicted_rendezvous_pod_is_no_disruption_of_a_node() -> None:
    evicted = rendezvous(deleting=True, disruption=EVICTED)
    result = plan(pretrain(), running(), 1, [*(node(i) for i in range(4)), evicted], NOW)
    assert (result.create, result.delete_pods, result.events) == ([], [], [])
    assert (result.status.restarts, result.status.disruptions) == (0, 0)


def test_disruption_budgets_cover_node_pods_and_rendezvous_pod_separately() -> None:
    job = pretrain(scheduling={"disruptionBudget": True}, replicas={"min": 3, "max": 5})
    budgets = [c for c in children.static_children(job) if c["kind"] == "PodDisruptionBudget"]
    by_name = {b["metadata"]["name"]: b["spec"] for b in budgets}
    assert by_name["j"]["minAvailable"] == 3
    assert by_name["j"]["selector"]["matchLabels"][naming.LABEL_ROLE] == naming.ROLE_NODE
    assert by_name["j-rdzv"]["minAvailable"] == 1
    assert by_name["j-rdzv"]["selector"]["matchLabels"][naming.LABEL_ROLE] == (
        naming.ROLE_RENDEZVOUS
    )
    # The Eviction API refuses to evict a pod that two budgets select: never both.
    node_labels = children.node_pod(job, 0)["metadata"]["labels"]
    rendezvous_labels = children.rendezvous_pod(job)["metadata"]["labels"]
    for labels in (node_labels, rendezvous_labels):
        selecting = [name for name, spec in by_name.items()
                     if spec["selector"]["matchLabels"].items() <= labels.items()]  # fmt: skip
        assert len(selecting) == 1


# ---- resizing a running job ----


def sized(index: int, bounds: str, **extra: Any) -> PodState:
    return node(index, bounds=bounds, **extra)


def test_node_pods_record_their_bounds_next_to_their_nnodes() -> None:
    pod = children.node_pod(pretrain(replicas={"min": 2, "max": 3}), 0)
    assert pod["metadata"]["annotations"][naming.ANNOTATION_REPLICAS] == "2:3"
    assert "--nnodes=2:3" in pod["spec"]["containers"][0]["command"]
    assert pod_state(pod).bounds == "2:3"
    del pod["metadata"]["annotations"][naming.ANNOTATION_REPLICAS]  # made before the annotation
    assert pod_state(pod).bounds == "2:3"


def test_raising_the_bounds_restarts_every_node_pod_together_with_the_new_ones() -> None:
    job = pretrain(replicas={"min": 2, "max": 3})
    before = JobStatus(phase=Phase.RUNNING, pod_uids={"0": "pod-0", "1": "pod-1"})
    old = [sized(0, "1:2"), sized(1, "1:2")]
    result = plan(job, before, 2, [*old, rendezvous()], NOW)
    assert sorted(result.delete_pods) == ["j-node-0", "j-node-1"]
    assert result.create == []  # not the new node 2 either: no mixed bounds in one rendezvous
    (resized,) = [e for e in result.events if e.reason == "Resized"]
    assert "from 1:2 to 2:3" in resized.message
    assert result.status.phase == Phase.RESTARTING

    terminating = [sized(i, "1:2", deleting=True) for i in (0, 1)]
    still = plan(job, result.status, 2, [*terminating, rendezvous()], NOW)
    assert (still.create, still.delete_pods) == ([], [])
    assert not [e for e in still.events if e.reason == "Resized"]  # said once

    gone = plan(job, still.status, 2, [rendezvous()], NOW)
    assert created_names(gone) == ["j-node-0", "j-node-1", "j-node-2"]  # at once: no backoff
    for pod in gone.create:
        assert "--nnodes=2:3" in pod["spec"]["containers"][0]["command"]
    assert (gone.status.restarts, gone.status.disruptions) == (0, 0)


def test_lowering_max_removes_the_extra_pods_and_restarts_the_rest_once() -> None:
    job = pretrain(replicas={"min": 2, "max": 2})
    status = JobStatus(phase=Phase.RUNNING, pod_uids={str(i): f"pod-{i}" for i in range(4)})
    result = plan(job, status, 2, [*(sized(i, "2:4") for i in range(4)), rendezvous()], NOW)
    assert sorted(result.delete_pods) == [f"j-node-{i}" for i in range(4)]
    assert len(result.delete_pods) == 4  # each once
    gone = plan(job, result.status, 2, [rendezvous()], NOW)
    assert created_names(gone) == ["j-node-0", "j-node-1"]
    assert gone.status.restarts == 0


def test_pods_with_the_current_bounds_or_unknown_bounds_are_left_alone() -> None:
    job = pretrain(replicas={"min": 2, "max": 4})
    pods = [sized(0, "2:4"), sized(1, "2:4"), node(2), sized(3, "2:4"), rendezvous()]
    result = plan(job, running(), 1, pods, NOW)
    assert (result.delete_pods, result.create, result.events) == ([], [], [])


@pytest.mark.parametrize("base_claim", ["checkpoints", "other"])
def test_a_base_on_the_jobs_own_checkpoint_claim_leaves_its_checkpoints_writable(
    base_claim: str,
) -> None:
    # On a kubelet, two volumes of one claim are one mount: a read-only base volume of the claim
    # the job checkpoints to made /checkpoints read-only (Errno 30 in a real pod).
    spec = FinetuneJobSpec.model_validate({
        "base": {"pretrainJob": "base"},
        "task": {"type": "SequenceClassification", "numLabels": 2},
        "data": {"train": {"uri": "file:///train.jsonl"}},
        "training": {"maxSteps": 10, "globalBatchSize": 8, "microBatchSize": 8},
        "checkpoint": {"storage": {"persistentVolumeClaim": "checkpoints"}},
    })  # fmt: skip
    job = Job(FINETUNE_JOB, "f", "ns", "uid", spec, "img", "/base/base/step-000000024",
              base_claim)  # fmt: skip
    pod = children.node_pod(job, 0)
    [container] = pod["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"] for v in pod["spec"]["volumes"]
              if "persistentVolumeClaim" in v}  # fmt: skip
    assert not mounts[naming.CHECKPOINT_MOUNT].get("readOnly")
    assert not claims[mounts[naming.CHECKPOINT_MOUNT]["name"]].get("readOnly")
    assert mounts[naming.BASE_MOUNT]["readOnly"] is True
    base_volume = mounts[naming.BASE_MOUNT]["name"]
    assert claims[base_volume]["claimName"] == base_claim
    # One volume per claim: never the checkpoint claim twice.
    assert sorted(c["claimName"] for c in claims.values()) == sorted({"checkpoints", base_claim})


def credentialed() -> Job:
    return pretrain(
        data={"sources": [{"uri": "s3://corpus/en/"}], "secretRef": {"name": "corpus-reader"}},
        checkpoint={"storage": {"uri": "s3://ckpt/j", "secretRef": {"name": "ckpt-writer"}}},
    )


def test_a_missing_secret_holds_the_pods_back_naming_the_field() -> None:
    missing = ["spec.checkpoint.storage.secretRef: Secret ckpt-writer not found in namespace ns"]
    waiting = plan(credentialed(), JobStatus(), 1, [], NOW, missing_secrets=missing)
    assert waiting.create == []
    assert waiting.status.phase == Phase.PENDING
    condition = next(c for c in waiting.status.conditions if c.type == "WaitingForCredentials")
    assert (condition.status, condition.reason, condition.message) == (
        "True", "SecretNotFound", missing[0])  # fmt: skip
    assert [e.reason for e in waiting.events] == ["SecretNotFound"]
    again = plan(credentialed(), waiting.status, 1, [], seconds(5), missing_secrets=missing)
    assert again.events == []  # said once, not at every look
    assert again.requeue_after == 10  # Secrets are not watched: it looks again by itself

    found = plan(credentialed(), again.status, 1, [], seconds(10))
    assert len(found.create) == 5  # the rendezvous and replicas.max node pods
    condition = next(c for c in found.status.conditions if c.type == "WaitingForCredentials")
    assert condition.status == "False"


def test_node_pods_take_the_credentials_from_the_secrets_not_the_spec() -> None:
    pod = children.node_pod(credentialed(), 0)
    container = pod["spec"]["containers"][0]
    # The data's Secret first: the checkpoints' variables win where both set one.
    assert container["envFrom"] == [{"secretRef": {"name": "corpus-reader"}},
                                    {"secretRef": {"name": "ckpt-writer"}}]  # fmt: skip
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for name in ("corpus-reader", "ckpt-writer"):
        mount = mounts[f"/var/run/secrets/pretrain/{name}"]
        assert mount["readOnly"]
        assert volumes[mount["name"]]["secret"] == {"secretName": name}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PRETRAIN_CHECKPOINT_DIR"] == "s3://ckpt/j"
    assert "envFrom" not in children.node_pod(pretrain(), 0)["spec"]["containers"][0]
