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
from pretrain_operator.children import Job
from pretrain_operator.observe import (
    BaseJobState,
    PodState,
    parse_metrics,
    pod_state,
    with_saved_checkpoints,
)
from pretrain_operator.reconcile import plan

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)


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


def rendezvous() -> PodState:
    return PodState("j-rdzv", "rdzv", naming.ROLE_RENDEZVOUS, None, "Running", True, False)


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


def test_a_failed_pod_is_replaced_and_counted_once() -> None:
    status = JobStatus(phase=Phase.RUNNING, pod_uids={str(i): f"pod-{i}" for i in range(4)})
    failed = node(1, "Failed", False, exit_code=1, reason="Error")
    result = plan(pretrain(), status, 1, [node(0), failed, node(2), node(3), rendezvous()], NOW)
    assert result.delete_pods == ["j-node-1"]
    assert result.status.restarts == 1
    assert result.status.pod_uids["1"] == ""
    assert [e.reason for e in result.events] == ["PodFailed"]
    # The next view: the failed pod is gone. It is recreated, not counted again.
    again = plan(pretrain(), result.status, 1, [node(0), node(2), node(3), rendezvous()], NOW)
    assert again.status.restarts == 1
    assert created_names(again) == ["j-node-1"]


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


def test_success_then_ttl() -> None:
    job = pretrain(ttlSecondsAfterFinished=60)
    done = plan(job, JobStatus(), 1, [node(0, "Succeeded", False), node(1), rendezvous()], NOW)
    assert done.status.phase == Phase.SUCCEEDED
    assert done.status.completion_time == "2026-11-27T12:00:00Z"
    assert "j-node-1" in done.delete_pods
    assert not done.delete_job
    assert not plan(job, done.status, 1, [], NOW + datetime.timedelta(seconds=59)).delete_job
    later = plan(job, done.status, 1, [], NOW + datetime.timedelta(seconds=61))
    assert later.delete_job


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
    assert kinds == ["ConfigMap", "Service", "Service", "PodDisruptionBudget", "PodGroup"]
    labels = children.node_pod(job, 1)["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
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
                 [f"pod-{i}", f"other-{i}"])))
        for i in draw(st.sets(st.integers(0, 9), max_size=10))
    ]  # fmt: skip
    if draw(st.booleans()):
        pods.append(rendezvous())
    status = JobStatus(
        phase=draw(st.sampled_from(list(Phase))),
        restarts=draw(st.integers(0, 6)),
        pod_uids={str(i): draw(st.sampled_from(["", f"pod-{i}"])) for i in range(draw(
            st.integers(0, 9)))},
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
