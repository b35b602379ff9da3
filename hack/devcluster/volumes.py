"""PersistentVolumeClaims bound to local directories, for checkpoints shared by node pods."""

from __future__ import annotations

from kubernetes import client

from devcluster.waiting import wait_until

STORAGE_CLASS = "devcluster-local"


def create_bound_claim(
    core: client.CoreV1Api, namespace: str, name: str, path: str, size: str = "10Gi"
) -> None:
    """A ReadWriteMany claim bound (by the controller-manager) to a volume at `path`."""
    volume = f"{namespace}-{name}"
    core.create_persistent_volume(
        {
            "metadata": {"name": volume, "labels": {"devcluster/claim-namespace": namespace}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": STORAGE_CLASS,
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": namespace, "name": name},
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": STORAGE_CLASS,
                "volumeName": volume,
                "resources": {"requests": {"storage": size}},
            },
        },
    )
    wait_until(
        lambda: (
            core.read_namespaced_persistent_volume_claim(name, namespace).status.phase == "Bound"
        ),
        f"claim {name} Bound",
    )
