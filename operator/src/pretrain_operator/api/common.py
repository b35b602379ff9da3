"""Fields shared by PretrainJob and FinetuneJob: training, checkpoints, replicas, resources,
pod overrides, scheduling and failure policy."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, WithJsonSchema

from pretrain_operator.api.base import ApiModel, Rule, cel

# A Kubernetes resource quantity ("32", 32, "256Gi", "500m"), as an int-or-string field.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[
    str,
    BeforeValidator(lambda value: str(value) if isinstance(value, int) else value),
    Field(pattern=QUANTITY_PATTERN),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                cel(
                    "type(self) == int || isQuantity(self)",
                    "must be a Kubernetes quantity such as 32, 500m or 256Gi",
                )
            ],
        }
    ),
]

# Free-form Kubernetes objects (tolerations, affinity, volumes, ...) that the API server validates
# where they land, in the pod; the CRD keeps them as they are.
FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
URI_PATTERN = r"^(s3|gs|pvc|file)://.+$"
MAX_URI = 2048


class Precision(StrEnum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class Strategy(StrEnum):
    DDP = "DDP"
    FSDP = "FSDP"


class OptimizerName(StrEnum):
    ADAMW = "AdamW"
    SGD = "SGD"


class Decay(StrEnum):
    COSINE = "Cosine"
    LINEAR = "Linear"
    CONSTANT = "Constant"


class Optimizer(ApiModel):
    """The optimizer; AdamW with decoupled weight decay unless told otherwise."""

    name: OptimizerName = Field(OptimizerName.ADAMW, description="Optimizer: AdamW or SGD.")
    learning_rate: float = Field(
        3.0e-4, gt=0, le=10, description="Peak learning rate, reached at the end of warmup."
    )
    weight_decay: float = Field(0.1, ge=0, le=10, description="Decoupled weight decay (AdamW).")
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=lambda: [0.9, 0.95],
        min_length=2,
        max_length=2,
        description="AdamW beta1 and beta2, each in [0, 1).",
    )


class Schedule(ApiModel):
    """Learning-rate schedule: linear warmup, then decay to minLearningRate at the last step."""

    warmup_steps: int = Field(0, ge=0, description="Steps of linear warmup from 0 to the peak.")
    decay: Decay = Field(Decay.COSINE, description="Decay after warmup: Cosine, Linear, Constant.")
    min_learning_rate: float = Field(
        0.0, ge=0, description="Learning rate at the end of the decay (absolute)."
    )


class Training(ApiModel):
    """How to train: batch sizes, length, optimizer, precision and parallelism."""

    RULES = (
        Rule(
            "self.microBatchSize <= self.globalBatchSize",
            "training.microBatchSize must not exceed training.globalBatchSize",
            lambda t: t.micro_batch_size <= t.global_batch_size,
            "microBatchSize",
        ),
        Rule(
            "has(self.maxSteps) || has(self.maxTokens)",
            "training needs maxSteps or maxTokens: how long to train",
            lambda t: t.max_steps is not None or t.max_tokens is not None,
            "maxSteps",
        ),
    )

    global_batch_size: int = Field(
        256,
        ge=1,
        le=1 << 24,
        description="Samples per optimizer step, the same whatever the number of nodes: ranks "
        "split it and accumulate micro-batches.",
    )
    micro_batch_size: int = Field(
        16, ge=1, le=1 << 16, description="Samples per device per forward/backward pass."
    )
    max_steps: int | None = Field(
        None, ge=1, le=1 << 40, description="Optimizer steps to train for (or maxTokens)."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Tokens to train on; training stops at the first step past it."
    )
    optimizer: Optimizer = Field(default_factory=Optimizer, description="The optimizer.")
    schedule: Schedule = Field(default_factory=Schedule, description="Learning-rate schedule.")
    precision: Precision = Field(
        Precision.BF16, description="Autocast precision: bf16, fp16 (with loss scaling) or fp32."
    )
    gradient_clipping: float = Field(
        1.0, ge=0, description="Clip the global gradient norm to this value; 0 disables."
    )
    strategy: Strategy = Field(
        Strategy.DDP, description="DDP replicates the model; FSDP shards it (FSDP2)."
    )
    compile: bool = Field(False, description="Compile the model with torch.compile.")
    seed: int = Field(
        1234,
        ge=0,
        le=(1 << 31) - 1,
        description="Seed of initialisation, data order and masking; with it the run is "
        "reproducible whatever the world size.",
    )


class SecretRef(ApiModel):
    """A Secret in the job's namespace whose keys are the storage provider's standard variables
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION; or
    GOOGLE_APPLICATION_CREDENTIALS with the key file it names): the node pods get them as
    environment variables, and the Secret's files under /var/run/secrets/pretrain/NAME/. Without
    one, the pods' ServiceAccount identity is used (workload identity)."""

    name: str = Field(max_length=253, pattern=NAME_PATTERN, description="The Secret's name.")


SECRET_REF_DESCRIPTION = (
    "A Secret of the job's namespace holding the store's credentials as its standard variables; "
    "without one, the pods' own identity (workload identity)."
)


class CheckpointStorage(ApiModel):
    """Where checkpoints go: a PersistentVolumeClaim (ReadWriteMany for multi-node jobs) or an
    object-store URI. Exactly one."""

    RULES = (
        Rule(
            "has(self.persistentVolumeClaim) != has(self.uri)",
            "checkpoint.storage needs exactly one of persistentVolumeClaim or uri",
            lambda s: (s.persistent_volume_claim is None) != (s.uri is None),
        ),
    )

    persistent_volume_claim: str | None = Field(
        None,
        max_length=253,
        pattern=NAME_PATTERN,
        description="Name of a PersistentVolumeClaim in the job's namespace.",
    )
    path: str = Field(
        "",
        max_length=1024,
        description="Directory inside the claim (default: the job's name).",
    )
    uri: str | None = Field(
        None,
        max_length=MAX_URI,
        pattern=r"^(s3|gs|file)://.+$",
        description="Object-store or local URI: s3://, gs:// or file://.",
    )
    secret_ref: SecretRef | None = Field(None, description=SECRET_REF_DESCRIPTION)


class Checkpoint(ApiModel):
    """Checkpointing: where, how often, how many to keep. Without storage, checkpoints live in
    the pod (emptyDir) and a job cannot resume after losing its pods."""

    storage: CheckpointStorage | None = Field(None, description="Where checkpoints are written.")
    every_steps: int = Field(500, ge=1, description="Save a checkpoint every this many steps.")
    keep: int = Field(3, ge=1, le=1000, description="Keep this many newest complete checkpoints.")
    background: bool = Field(
        True,
        description="Write checkpoints in the background: the loop blocks only while the state "
        "is copied to host memory (which needs room for one extra copy of it).",
    )


class Replicas(ApiModel):
    """Elastic node count: the job runs with any number of ready nodes in [min, max]."""

    RULES = (
        Rule(
            "self.min <= self.max",
            "replicas.min must not exceed replicas.max",
            lambda r: r.min <= r.max,
            "min",
        ),
    )

    min: int = Field(1, ge=1, le=1024, description="Fewest nodes the job trains with.")
    max: int = Field(1, ge=1, le=1024, description="Most nodes; one pod is created per node.")


class AcceleratorType(StrEnum):
    NVIDIA_GPU = "nvidia.com/gpu"
    AMD_GPU = "amd.com/gpu"
    GOOGLE_TPU = "google.com/tpu"


class Accelerator(ApiModel):
    """Accelerators per node (pod): GPUs as resource limits, TPUs with GKE node selectors."""

    RULES = (
        Rule(
            "!has(self.topology) || self.type == 'google.com/tpu'",
            "accelerator.topology applies to google.com/tpu only",
            lambda a: a.topology is None or a.type == AcceleratorType.GOOGLE_TPU,
            "topology",
        ),
    )

    type: AcceleratorType = Field(description="Extended resource name of the accelerator.")
    count: int = Field(1, ge=1, le=64, description="Accelerators per node.")
    topology: str | None = Field(
        None,
        pattern=r"^[1-9][0-9]*(x[1-9][0-9]*){1,2}$",
        max_length=32,
        description="TPU slice topology such as 2x2 or 2x2x4 (GKE "
        "cloud.google.com/gke-tpu-topology).",
    )
    tpu_accelerator: str | None = Field(
        None,
        max_length=63,
        description="GKE TPU type (cloud.google.com/gke-tpu-accelerator), e.g. "
        "tpu-v5-lite-podslice.",
    )


class Resources(ApiModel):
    """What one node (one pod) asks for."""

    accelerator: Accelerator | None = Field(
        None, description="Accelerators per node; none trains on CPU."
    )
    cpu: Quantity | None = Field(None, description="CPU request and limit per node.")
    memory: Quantity | None = Field(None, description="Memory request and limit per node.")


class PodTemplate(ApiModel):
    """Overrides for the node pods."""

    image: str | None = Field(None, max_length=1024, description="Trainer image.")
    image_pull_policy: str | None = Field(
        None,
        pattern="^(Always|IfNotPresent|Never)$",
        description="Always, IfNotPresent or Never.",
    )
    image_pull_secrets: list[FreeForm] = Field(
        default_factory=list, max_length=16, description="Secrets to pull the image with."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Extra node selector of the node pods."
    )
    tolerations: list[FreeForm] = Field(
        default_factory=list, max_length=64, description="Tolerations of the node pods."
    )
    affinity: FreeForm | None = Field(None, description="Affinity of the node pods.")
    priority_class_name: str | None = Field(
        None, max_length=253, description="PriorityClass of the node pods."
    )
    service_account_name: str | None = Field(
        None, max_length=253, description="ServiceAccount the node pods run as."
    )
    env: list[FreeForm] = Field(
        default_factory=list, max_length=256, description="Extra environment variables."
    )
    volumes: list[FreeForm] = Field(
        default_factory=list, max_length=64, description="Extra volumes of the node pods."
    )
    volume_mounts: list[FreeForm] = Field(
        default_factory=list, max_length=64, description="Extra mounts in the trainer container."
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    termination_grace_period_seconds: int = Field(
        120,
        ge=10,
        le=3600,
        description="Seconds a node pod has from SIGTERM (deletion, eviction, preemption) to "
        "SIGKILL: its workers finish the step and save a checkpoint in them, less a margin of a "
        "tenth (2 to 15 s) for stopping. At least 10, at most 3600.",
    )


class Scheduling(ApiModel):
    """Gang scheduling and queueing."""

    gang: bool = Field(
        False,
        description="Create a PodGroup so that replicas.min pods are scheduled together or not "
        "at all (scheduler-plugins coscheduling or Volcano).",
    )
    scheduler_name: str = Field(
        "", max_length=253, description="Scheduler of the node pods (empty: the default)."
    )
    queue_name: str = Field(
        "",
        max_length=253,
        description="Kueue LocalQueue in the job's namespace (or the job's "
        "kueue.x-k8s.io/queue-name label): the job is Queued until Kueue admits its Workload, "
        "at replicas.min node pods and the rendezvous pod.",
    )
    disruption_budget: bool = Field(
        False,
        description="Create PodDisruptionBudgets: one keeps replicas.min node pods through "
        "voluntary disruptions (drains, evictions), another (NAME-rdzv) keeps the rendezvous pod "
        "while it is ready.",
    )


class FailurePolicy(ApiModel):
    """How many pod failures the job survives."""

    max_restarts: int = Field(
        10,
        ge=0,
        le=10000,
        description="Recreate failed or lost pods up to this many times; then the job fails. "
        "Disruptions (eviction, preemption, drain, a lost node) do not count.",
    )


class JobSpecBase(ApiModel):
    """Fields PretrainJob and FinetuneJob share."""

    training: Training = Field(description="Batch sizes, length, optimizer, precision.")
    checkpoint: Checkpoint = Field(default_factory=Checkpoint, description="Checkpointing.")
    replicas: Replicas = Field(default_factory=Replicas, description="Elastic node count.")
    resources: Resources = Field(default_factory=Resources, description="Per-node resources.")
    template: PodTemplate = Field(default_factory=PodTemplate, description="Pod overrides.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Gang, queue, PDB.")
    failure_policy: FailurePolicy = Field(
        default_factory=FailurePolicy, description="Restart budget."
    )
    suspend: bool = Field(
        False,
        description="true deletes the pods and keeps the checkpoints; false resumes from the "
        "last one.",
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job this long after it Succeeded or Failed."
    )
