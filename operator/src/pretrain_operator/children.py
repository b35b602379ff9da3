"""The objects one job owns, built as plain dicts from its spec: pure functions, no I/O.

For job J: ConfigMap J-config (the spec as JSON), headless Service J (pod DNS), the rendezvous pod
and Service J-rdzv (the c10d store lives outside the workers, so losing any worker, worker 0
included, never takes the rendezvous down), and pods J-node-0 .. J-node-(max-1) running torchrun
with --nnodes=MIN:MAX under the node supervisor (`pretrain_trainer.node`, PID 1). Optional:
PodDisruptionBudgets (node pods, rendezvous pod), PodGroup (gang); a queued job's Kueue
Workload is queueing.py's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pretrain_operator import API_GROUP, API_VERSION, launch, naming
from pretrain_operator.api import FinetuneJobSpec, Kind, PretrainJobSpec
from pretrain_operator.api.common import AcceleratorType, CheckpointStorage

Manifest = dict[str, Any]

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
}
RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
TPU_ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TPU_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"  # the trainer's final values, for the status


@dataclass(frozen=True, slots=True)
class Job:
    """What the builders need to know about one job."""

    kind: Kind
    name: str
    namespace: str
    uid: str
    spec: PretrainJobSpec | FinetuneJobSpec
    image: str  # the trainer image unless spec.template.image overrides it
    base_checkpoint: str = ""  # FinetuneJob: the resolved base checkpoint URI or path
    base_claim: str = ""  # FinetuneJob: the PVC holding it, mounted read-only

    @property
    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": self.kind.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def labels(self, role: str | None = None) -> dict[str, str]:
        labels = {naming.LABEL_JOB: self.name, naming.LABEL_KIND: self.kind.kind}
        if role:
            labels[naming.LABEL_ROLE] = role
        return labels

    def metadata(self, name: str, role: str | None = None) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(role),
            "ownerReferences": [self.owner_reference],
        }


def config_map(job: Job) -> Manifest:
    """The spec as JSON, read by the trainer with the same API models."""
    document = {"kind": job.kind.kind, "name": job.name, "namespace": job.namespace,
                "spec": job.spec.wire()}  # fmt: skip
    if job.base_checkpoint:
        document["baseCheckpoint"] = job.base_checkpoint
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": job.metadata(naming.config_map_name(job.name)),
        "data": {naming.CONFIG_FILE: json.dumps(document, indent=2, sort_keys=True)},
    }


def _headless_service(job: Job, name: str, role: str, port_name: str, port: int) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": job.metadata(name),
        "spec": {
            "clusterIP": "None",
            # Ranks must resolve each other and the store before they are Ready (rendezvous).
            "publishNotReadyAddresses": True,
            "selector": job.labels(role),
            "ports": [{"name": port_name, "port": port}],
        },
    }


def headless_service(job: Job) -> Manifest:
    """DNS for the node pods: `<job>-node-<i>.<job>`."""
    return _headless_service(job, naming.service_name(job.name), naming.ROLE_NODE, "metrics",
                             naming.METRICS_PORT)  # fmt: skip


def rendezvous_service(job: Job) -> Manifest:
    return _headless_service(job, naming.rendezvous_name(job.name), naming.ROLE_RENDEZVOUS, "c10d",
                             naming.RENDEZVOUS_PORT)  # fmt: skip


def _container_base(job: Job) -> dict[str, Any]:
    template = job.spec.template
    container: dict[str, Any] = {
        "name": naming.TRAINER_CONTAINER,
        "image": template.image or job.image,
        "securityContext": RESTRICTED_CONTAINER,
    }
    if template.image_pull_policy:
        container["imagePullPolicy"] = template.image_pull_policy
    return container


def _pod_base(job: Job, name: str, role: str) -> Manifest:
    template = job.spec.template
    metadata = job.metadata(name, role)
    metadata["labels"] = {**template.labels, **metadata["labels"]}
    if template.annotations:
        metadata["annotations"] = dict(template.annotations)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator replaces failed pods and counts restarts
        "securityContext": RESTRICTED_POD,
        "enableServiceLinks": False,
    }
    if template.service_account_name:
        spec["serviceAccountName"] = template.service_account_name
    if template.image_pull_secrets:
        spec["imagePullSecrets"] = template.image_pull_secrets
    if template.priority_class_name:
        spec["priorityClassName"] = template.priority_class_name
    if job.spec.scheduling.scheduler_name:
        spec["schedulerName"] = job.spec.scheduling.scheduler_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def rendezvous_pod(job: Job) -> Manifest:
    """Holds the c10d TCPStore that torchrun agents rendezvous through."""
    pod = _pod_base(job, naming.rendezvous_name(job.name), naming.ROLE_RENDEZVOUS)
    container = _container_base(job)
    container["command"] = ["python", "-m", "pretrain_trainer.rendezvous"]
    container["args"] = [f"--port={naming.RENDEZVOUS_PORT}"]
    container["ports"] = [{"name": "c10d", "containerPort": naming.RENDEZVOUS_PORT}]
    container["resources"] = {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "512Mi"},
    }
    container["readinessProbe"] = {
        "tcpSocket": {"port": naming.RENDEZVOUS_PORT},
        "periodSeconds": 5,
    }
    pod["spec"]["hostname"] = naming.rendezvous_name(job.name)
    pod["spec"]["subdomain"] = naming.rendezvous_name(job.name)
    pod["spec"]["containers"] = [container]
    pod["spec"]["nodeSelector"] = dict(job.spec.template.node_selector)
    pod["spec"]["tolerations"] = list(job.spec.template.tolerations)
    return pod


def processes_per_node(job: Job) -> int:
    """One trainer process per GPU; TPUs and CPUs run one process per node (XLA/threads)."""
    accelerator = job.spec.resources.accelerator
    if accelerator and accelerator.type != AcceleratorType.GOOGLE_TPU:
        return accelerator.count
    return 1


def torchrun_arguments(job: Job) -> list[str]:
    """The elastic launch every node pod runs (the same launch `pretrain run --nproc` uses)."""
    return launch.torchrun_arguments(
        min_nodes=job.spec.replicas.min,
        max_nodes=job.spec.replicas.max,
        processes_per_node=processes_per_node(job),
        rendezvous_endpoint=f"{naming.rendezvous_name(job.name)}:{naming.RENDEZVOUS_PORT}",
        rendezvous_id=job.uid,
        config=f"{naming.CONFIG_MOUNT}/{naming.CONFIG_FILE}",
    )


def node_command(job: Job) -> list[str]:
    """torchrun under the node supervisor (PID 1), which knows the pod's grace period: the
    workers save on SIGTERM within it."""
    grace = job.spec.template.termination_grace_period_seconds
    return launch.node_command(grace, torchrun_arguments(job))


def _resources(job: Job) -> dict[str, Any]:
    resources = job.spec.resources
    amounts: dict[str, str] = {}
    if resources.cpu:
        amounts["cpu"] = resources.cpu
    if resources.memory:
        amounts["memory"] = resources.memory
    if resources.accelerator:
        amounts[resources.accelerator.type.value] = str(resources.accelerator.count)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _checkpoint_volume(job: Job) -> dict[str, Any]:
    storage: CheckpointStorage | None = job.spec.checkpoint.storage
    if storage and storage.persistent_volume_claim:
        claim = {"claimName": storage.persistent_volume_claim}
        return {"name": "checkpoints", "persistentVolumeClaim": claim}
    return {"name": "checkpoints", "emptyDir": {}}


def _checkpoint_claim(job: Job) -> str:
    storage = job.spec.checkpoint.storage
    return storage.persistent_volume_claim if storage and storage.persistent_volume_claim else ""


def _checkpoint_location(job: Job) -> str:
    storage = job.spec.checkpoint.storage
    if storage and storage.uri:
        return storage.uri.rstrip("/")
    path = storage.path if storage and storage.path else job.name
    return f"{naming.CHECKPOINT_MOUNT}/{path.strip('/')}"


def secret_refs(spec: PretrainJobSpec | FinetuneJobSpec) -> list[tuple[str, str]]:
    """(field, Secret name) of the credentials the job names: the data's, then the
    checkpoints' (whose variables win where both Secrets set one)."""
    refs = []
    if spec.data.secret_ref:
        refs.append(("spec.data.secretRef", spec.data.secret_ref.name))
    storage = spec.checkpoint.storage
    if storage and storage.secret_ref:
        refs.append(("spec.checkpoint.storage.secretRef", storage.secret_ref.name))
    return refs


def _credentials(job: Job) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Any]]:
    """The Secrets' keys as environment variables, their files mounted read-only (a GCP key
    file that GOOGLE_APPLICATION_CREDENTIALS names): the values never pass through the
    operator, the ConfigMap or the status."""
    names = list(dict.fromkeys(name for _, name in secret_refs(job.spec)))
    env_from = [{"secretRef": {"name": name}} for name in names]
    mounts = [{"name": f"credentials-{number}", "readOnly": True,
               "mountPath": f"{naming.CREDENTIALS_MOUNT}/{name}"}
              for number, name in enumerate(names)]  # fmt: skip
    volumes = [{"name": f"credentials-{number}", "secret": {"secretName": name}}
               for number, name in enumerate(names)]  # fmt: skip
    return env_from, mounts, volumes


def data_claims(spec: PretrainJobSpec | FinetuneJobSpec) -> list[str]:
    """Claims the job reads through pvc://CLAIM/... URIs (data, tokenizer, base model)."""
    if isinstance(spec, PretrainJobSpec):
        uris = [source.uri for source in spec.data.sources] + [spec.tokenizer.uri or ""]
    else:
        splits = [spec.data.train, spec.data.validation]
        uris = [split.uri for split in splits if split] + [
            spec.base.hugging_face.uri if spec.base.hugging_face else ""
        ]
    claims = (uri.removeprefix("pvc://").split("/", 1)[0] for uri in uris
              if uri.startswith("pvc://"))  # fmt: skip
    return sorted(set(claims))


def _data_volumes(job: Job) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read-only mounts of the data claims where the trainer resolves pvc:// (a mount the
    template already puts there wins)."""
    taken = {mount.get("mountPath") for mount in job.spec.template.volume_mounts}
    mounts, volumes = [], []
    for number, claim in enumerate(data_claims(job.spec)):
        path = f"{naming.CLAIMS_MOUNT}/{claim}"
        if path in taken:
            continue
        mounts.append({"name": f"claim-{number}", "mountPath": path, "readOnly": True})
        claim_source = {"claimName": claim, "readOnly": True}
        volumes.append({"name": f"claim-{number}", "persistentVolumeClaim": claim_source})
    return mounts, volumes


def node_pod(job: Job, index: int) -> Manifest:
    name = naming.node_pod_name(job.name, index)
    pod = _pod_base(job, name, naming.ROLE_NODE)
    pod["metadata"]["labels"][naming.LABEL_NODE_INDEX] = str(index)
    # What the reconciler compares with spec.replicas to tell a resize (torchrun's --nnodes).
    replicas = job.spec.replicas
    pod["metadata"].setdefault("annotations", {})[naming.ANNOTATION_REPLICAS] = (
        naming.replica_bounds(replicas.min, replicas.max)
    )
    scheduling = job.spec.scheduling
    if scheduling.gang:
        pod["metadata"]["labels"][POD_GROUP_LABEL] = job.name

    template = job.spec.template
    env = [
        {"name": "PRETRAIN_JOB_NAME", "value": job.name},
        {"name": "PRETRAIN_JOB_KIND", "value": job.kind.kind},
        {"name": "PRETRAIN_NODE_INDEX", "value": str(index)},
        {"name": "PRETRAIN_CHECKPOINT_DIR", "value": _checkpoint_location(job)},
        {"name": "PRETRAIN_METRICS_PORT", "value": str(naming.METRICS_PORT)},
        {"name": "PRETRAIN_NAMESPACE",
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PRETRAIN_TERMINATION_LOG", "value": TERMINATION_MESSAGE_PATH},
        *({"name": name, "value": value} for name, value in launch.ENVIRONMENT.items()),
    ]  # fmt: skip
    if job.base_checkpoint:
        env.append({"name": "PRETRAIN_BASE_CHECKPOINT", "value": job.base_checkpoint})
    mounts = [
        {"name": "config", "mountPath": naming.CONFIG_MOUNT, "readOnly": True},
        {"name": "checkpoints", "mountPath": naming.CHECKPOINT_MOUNT},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": naming.config_map_name(job.name)}},
        _checkpoint_volume(job),
        # torch shares tensors between processes through /dev/shm; the default 64Mi is too small.
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    claim_mounts, claim_volumes = _data_volumes(job)
    env_from, credential_mounts, credential_volumes = _credentials(job)
    mounts += claim_mounts + credential_mounts
    volumes += claim_volumes + credential_volumes
    if job.base_claim and job.base_claim == _checkpoint_claim(job):
        # The base lives on this job's own checkpoint claim: mount that volume a second time,
        # read-only. A second volume of the same claim would be the same mount on a kubelet,
        # and its readOnly would make the job's checkpoints read-only too.
        mounts.append({"name": "checkpoints", "mountPath": naming.BASE_MOUNT, "readOnly": True})
    elif job.base_claim:
        mounts.append({"name": "base", "mountPath": naming.BASE_MOUNT, "readOnly": True})
        volumes.append({"name": "base", "persistentVolumeClaim": {"claimName": job.base_claim,
                                                                  "readOnly": True}})  # fmt: skip

    container = _container_base(job)
    container["command"] = node_command(job)
    container["env"] = env + list(template.env)
    if env_from:
        container["envFrom"] = env_from
    container["ports"] = [{"name": "metrics", "containerPort": naming.METRICS_PORT}]
    container["volumeMounts"] = mounts + list(template.volume_mounts)
    container["resources"] = _resources(job)
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"

    spec = pod["spec"]
    spec["hostname"] = name
    spec["subdomain"] = naming.service_name(job.name)
    spec["terminationGracePeriodSeconds"] = template.termination_grace_period_seconds
    spec["containers"] = [container]
    spec["volumes"] = volumes + list(template.volumes)
    node_selector = dict(template.node_selector)
    accelerator = job.spec.resources.accelerator
    if accelerator and accelerator.type == AcceleratorType.GOOGLE_TPU:
        if accelerator.tpu_accelerator:
            node_selector[TPU_ACCELERATOR_LABEL] = accelerator.tpu_accelerator
        if accelerator.topology:
            node_selector[TPU_TOPOLOGY_LABEL] = accelerator.topology
    if node_selector:
        spec["nodeSelector"] = node_selector
    if template.tolerations:
        spec["tolerations"] = list(template.tolerations)
    if template.affinity:
        spec["affinity"] = template.affinity
    return pod


def pod_disruption_budget(job: Job) -> Manifest:
    """Voluntary disruptions (drains, evictions) leave at least replicas.min node pods."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": job.metadata(job.name),
        "spec": {
            "minAvailable": job.spec.replicas.min,
            "selector": {"matchLabels": job.labels(naming.ROLE_NODE)},
        },
    }


def rendezvous_disruption_budget(job: Job) -> Manifest:
    """No voluntary eviction of the rendezvous pod while it serves: every agent's next
    rendezvous goes through it. A budget of its own, because the Eviction API refuses to evict
    a pod that more than one budget selects, and one budget over both roles could not say
    "all of these, at least min of those". A rendezvous pod that is not ready serves nobody and
    may go (unhealthyPodEvictionPolicy AlwaysAllow), so it never blocks a drain for nothing."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": job.metadata(naming.rendezvous_name(job.name)),
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": job.labels(naming.ROLE_RENDEZVOUS)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def pod_group(job: Job) -> Manifest:
    """scheduler-plugins coscheduling: schedule replicas.min pods together or none."""
    return {
        "apiVersion": "scheduling.x-k8s.io/v1alpha1",
        "kind": "PodGroup",
        "metadata": job.metadata(job.name),
        "spec": {"minMember": job.spec.replicas.min},
    }


def node_selector_string(job: Job) -> str:
    """The label selector of the node pods, for the scale subresource."""
    return ",".join(f"{k}={v}" for k, v in job.labels(naming.ROLE_NODE).items())


def static_children(job: Job) -> list[Manifest]:
    """Children that live as long as the job, whatever its phase."""
    children = [config_map(job), headless_service(job), rendezvous_service(job)]
    if job.spec.scheduling.disruption_budget:
        children += [pod_disruption_budget(job), rendezvous_disruption_budget(job)]
    if job.spec.scheduling.gang:
        children.append(pod_group(job))
    return children
