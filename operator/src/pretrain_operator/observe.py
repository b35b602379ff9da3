"""What the operator observes, reduced to plain values: node pods, the base of a FinetuneJob,
and the trainer's metrics. Pure functions over the objects the API server returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from pretrain_operator import naming


@dataclass(frozen=True, slots=True)
class PodState:
    """One child pod as the reconciler sees it."""

    name: str
    uid: str
    role: str
    index: int | None
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    ready: bool
    deleting: bool
    node: str = ""
    ip: str = ""
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    unschedulable: str = ""  # the scheduler's message while it cannot place the pod
    # The DisruptionTarget condition's "reason: message" (eviction, preemption, drain, taint,
    # pod GC): the pod is going away for reasons of the cluster, not of the training.
    disruption: str = ""
    bounds: str = ""  # node pods: the "MIN:MAX" torchrun was started with; "" when unknown

    @property
    def failed(self) -> bool:
        return self.phase == "Failed" and not self.deleting

    @property
    def completed(self) -> bool:
        """The trainer exited 0: torchrun finished. The kubelet writes the container's end
        before the Succeeded phase (once the whole pod has stopped), and with restartPolicy
        Never an exit 0 stays one, so it counts as soon as it shows."""
        return self.phase == "Succeeded" or (self.exit_code == 0 and self.phase != "Failed")

    @property
    def disrupted(self) -> bool:
        return bool(self.disruption)

    @property
    def active(self) -> bool:
        """Still training or about to: not finished, not going away."""
        return (self.phase in {"Pending", "Running", "Unknown"} and not self.deleting
                and not self.completed)  # fmt: skip


def _disruption(conditions: dict[str, dict[str, Any]]) -> str:
    target = conditions.get("DisruptionTarget") or {}
    if target.get("status") != "True":
        return ""
    reason = target.get("reason") or "DisruptionTarget"
    message = (target.get("message") or "").strip()
    return f"{reason}: {message}" if message else reason


def _nnodes(arguments: list[str]) -> str:
    """torchrun's --nnodes (`--nnodes=2:4`, `--nnodes 2:4`, `--nnodes=3`) as "MIN:MAX"."""
    for position, argument in enumerate(arguments):
        value = None
        if argument.startswith("--nnodes="):
            value = argument.removeprefix("--nnodes=")
        elif argument == "--nnodes" and position + 1 < len(arguments):
            value = arguments[position + 1]
        if value is not None:
            low, _, high = value.partition(":")
            if low.isdigit() and (high or low).isdigit():
                return f"{int(low)}:{int(high or low)}"
    return ""


def _bounds(annotations: dict[str, str], spec: dict[str, Any]) -> str:
    """The annotation the operator puts on node pods; for pods made before it did, torchrun's
    --nnodes argument."""
    recorded = annotations.get(naming.ANNOTATION_REPLICAS)
    if isinstance(recorded, str) and recorded:
        return recorded
    for container in spec.get("containers") or []:
        if isinstance(container, dict) and container.get("name") == naming.TRAINER_CONTAINER:
            arguments = [*(container.get("command") or []), *(container.get("args") or [])]
            return _nnodes([str(a) for a in arguments])
    return ""


def pod_state(pod: dict[str, Any]) -> PodState:
    metadata, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    index = labels.get(naming.LABEL_NODE_INDEX)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled", {})
    unschedulable = ""
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        unschedulable = scheduled.get("message", "")
    exit_code, reason, message = None, status.get("reason", ""), status.get("message", "")
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if container.get("name") == naming.TRAINER_CONTAINER and terminated:
            exit_code = terminated.get("exitCode")
            reason = terminated.get("reason") or reason
            message = terminated.get("message") or message
    return PodState(
        name=metadata["name"],
        uid=metadata.get("uid", ""),
        role=labels.get(naming.LABEL_ROLE, ""),
        index=int(index) if index is not None and index.isdigit() else None,
        phase=status.get("phase", "Pending"),
        ready=conditions.get("Ready", {}).get("status") == "True",
        deleting=bool(metadata.get("deletionTimestamp")),
        node=spec.get("nodeName", ""),
        ip=status.get("podIP", ""),
        exit_code=exit_code,
        reason=reason or "",
        message=(message or "").strip()[-512:],
        unschedulable=unschedulable,
        disruption=_disruption(conditions)[:1024],
        bounds=_bounds(annotations, spec),
    )


@dataclass(frozen=True, slots=True)
class BaseJobState:
    """The PretrainJob a FinetuneJob starts from."""

    found: bool
    phase: str = ""
    checkpoint_uri: str = ""
    checkpoint_step: int = 0
    claim: str = ""  # the PVC its checkpoints live on, if any


def base_job_state(body: dict[str, Any] | None) -> BaseJobState:
    if body is None:
        return BaseJobState(found=False)
    status = body.get("status") or {}
    checkpoint = status.get("checkpoint") or {}
    storage = ((body.get("spec") or {}).get("checkpoint") or {}).get("storage") or {}
    return BaseJobState(
        found=True,
        phase=status.get("phase", "Pending"),
        checkpoint_uri=checkpoint.get("uri", ""),
        checkpoint_step=int(checkpoint.get("step", 0) or 0),
        claim=storage.get("persistentVolumeClaim", "") or "",
    )


@dataclass(frozen=True, slots=True)
class TrainerMetrics:
    """What the trainer's Prometheus endpoint says (local ranks aggregated by the trainer)."""

    step: int | None = None
    loss: float | None = None
    tokens: int | None = None
    tokens_per_second: float | None = None
    mfu: float | None = None
    checkpoint_step: int | None = None
    world_size: int | None = None
    evaluation_step: int | None = None
    evaluation: dict[str, float] = field(default_factory=dict)  # pretrain_eval_metric{name}


METRIC_FIELDS = {
    "pretrain_train_step": "step",
    "pretrain_train_loss": "loss",
    "pretrain_tokens_total": "tokens",
    "pretrain_tokens_per_second": "tokens_per_second",
    "pretrain_mfu_ratio": "mfu",
    "pretrain_checkpoint_last_step": "checkpoint_step",
    "pretrain_world_size": "world_size",
    "pretrain_eval_step": "evaluation_step",
}
INTEGER_FIELDS = {"step", "tokens", "checkpoint_step", "world_size", "evaluation_step"}
EVAL_METRIC = "pretrain_eval_metric"


def _label(labels: str, name: str) -> str | None:
    """The value of label `name` in `{a="x",name="y"}` (values here never hold quotes)."""
    for part in labels.strip("{}").split(","):
        key, _, value = part.partition("=")
        if key.strip() == name:
            return value.strip().strip('"')
    return None


def parse_metrics(text: str) -> TrainerMetrics:
    """Read the few gauges the status shows from Prometheus text exposition format."""
    values: dict[str, Any] = {}
    evaluation: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value_part = line.rpartition(" ")
        name, _, labels = name_part.partition("{")
        name = name.strip()
        attribute = METRIC_FIELDS.get(name)
        if attribute is None and name != EVAL_METRIC:
            continue
        try:
            value = float(value_part)
        except ValueError:
            continue
        if attribute is None:  # one evaluation score; a NaN one is left out of the status
            metric = _label(labels, "name")
            if metric and math.isfinite(value):
                evaluation[metric] = value
            continue
        if not math.isfinite(value):  # a NaN loss is for alerts; JSON status cannot hold it
            values[attribute] = None
            continue
        values[attribute] = int(value) if attribute in INTEGER_FIELDS else value
    return TrainerMetrics(**values, evaluation=evaluation)


def with_saved_checkpoints(
    live: TrainerMetrics | None, stopped: list[TrainerMetrics]
) -> TrainerMetrics | None:
    """The live metrics, with the newest checkpoint that stopped pods reported in their
    termination messages (a pod that saved on SIGTERM has no endpoint left to scrape, and the
    workers that take over report no checkpoint until they write one). Without live metrics, the
    stopped pods' report itself: the progress at the stop."""
    saved = [report for report in stopped if report.checkpoint_step is not None]
    if not saved:
        return live
    newest = max(saved, key=lambda report: report.checkpoint_step or 0)
    if live is None:
        return newest
    if (live.checkpoint_step or 0) >= (newest.checkpoint_step or 0):
        return live
    return replace(live, checkpoint_step=newest.checkpoint_step)
