"""The status the operator writes: phase, conditions, replicas, progress, checkpoint."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from pretrain_operator.api.base import ApiModel


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"  # waiting for Kueue to admit it (the Admitted condition says why not)
    STARTING = "Starting"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


FINISHED_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class Condition(ApiModel):
    """A standard Kubernetes condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Running, Succeeded.")
    status: str = Field(pattern="^(True|False|Unknown)$", description="True, False or Unknown.")
    reason: str = Field("", max_length=1024, description="CamelCase reason.")
    message: str = Field("", max_length=32768, description="Human-readable detail.")
    last_transition_time: str | None = Field(
        None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        None, ge=0, description="Generation it was computed at."
    )


class ReplicaStatus(ApiModel):
    """Node pods by state."""

    desired: int = Field(0, ge=0, description="Node pods the job wants (replicas.max).")
    ready: int = Field(0, ge=0, description="Node pods running and ready.")
    pending: int = Field(0, ge=0, description="Node pods not yet running (e.g. unschedulable).")
    failed: int = Field(0, ge=0, description="Node pods failed and not yet replaced.")


class Progress(ApiModel):
    """Training progress as the trainer reports it."""

    step: int = Field(0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Steps to train for, when known.")
    tokens: int = Field(0, ge=0, description="Tokens trained on.")
    loss: float | None = Field(None, description="Latest training loss.")
    tokens_per_second: float | None = Field(None, ge=0, description="Recent throughput.")
    mfu: float | None = Field(None, ge=0, description="Model FLOPs utilisation, 0-1.")


class CheckpointStatus(ApiModel):
    """The last validated checkpoint (complete, with its manifest)."""

    step: int = Field(0, ge=0, description="Step of the checkpoint.")
    uri: str = Field("", description="Where it is.")


class BaseStatus(ApiModel):
    """FinetuneJob: the checkpoint the base resolved to."""

    resolved_checkpoint: str = Field("", description="Checkpoint URI fine-tuning starts from.")


class EvaluationStatus(ApiModel):
    """FinetuneJob: the latest evaluation."""

    step: int = Field(0, ge=0, description="Step of the evaluation.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Metric name to value.")


class Backoff(ApiModel):
    """The delay before node pods that failed are recreated, as a Job delays its retries: 10 s
    for the first failure, doubling with each consecutive one, at most 5 min; forgotten once the
    job has trained for 10 min without a failure. Pods that fail while a delay runs (one crash
    takes every rank down) wait for the same delay rather than doubling it."""

    failures: int = Field(0, ge=0, description="Consecutive failures the delay was computed from.")
    delay_seconds: int = Field(0, ge=0, description="The current delay.")
    recreate_after: str | None = Field(
        None, description="When the failed node pods may be recreated (RFC 3339)."
    )
    indexes: list[int] = Field(
        default_factory=list, description="Node indexes waiting for recreateAfter."
    )


class JobStatus(ApiModel):
    """Observed state of a PretrainJob or FinetuneJob."""

    phase: Phase = Field(Phase.PENDING, description="Pending, Starting, Running, Restarting, "
                         "Suspended, Succeeded or Failed.")  # fmt: skip
    conditions: list[Condition] = Field(default_factory=list, description="Conditions.")
    observed_generation: int = Field(0, ge=0, description="Generation last reconciled.")
    replicas: ReplicaStatus = Field(default_factory=ReplicaStatus, description="Node pods.")
    nodes: str = Field("", description="Ready/desired node pods, e.g. 3/4.")
    selector: str = Field("", description="Label selector of the node pods (scale subresource).")
    world_size: int = Field(0, ge=0, description="Processes training now (nodes x devices).")
    restarts: int = Field(
        0,
        ge=0,
        description="Node pods recreated after they failed or vanished; counted against "
        "failurePolicy.maxRestarts.",
    )
    disruptions: int = Field(
        0,
        ge=0,
        description="Node pods recreated after a disruption (the DisruptionTarget pod "
        "condition: eviction, preemption, node drain or taint, a lost node); not counted "
        "against failurePolicy.maxRestarts.",
    )
    backoff: Backoff | None = Field(
        None, description="Delay before failed node pods are recreated; absent when none."
    )
    pod_uids: dict[str, str] = Field(
        default_factory=dict,
        description="UID of the node pod the operator created last, by node index (empty once "
        "its loss is counted as a restart or a disruption, or its deletion was the "
        "operator's own): how a vanished pod is told from one never created.",
    )
    progress: Progress = Field(default_factory=Progress, description="Training progress.")
    checkpoint: CheckpointStatus = Field(
        default_factory=CheckpointStatus, description="Last validated checkpoint."
    )
    start_time: str | None = Field(None, description="When training first started.")
    completion_time: str | None = Field(None, description="When the job finished.")
    # FinetuneJob only.
    base: BaseStatus | None = Field(None, description="FinetuneJob: resolved base.")
    evaluation: EvaluationStatus | None = Field(None, description="FinetuneJob: evaluation.")
