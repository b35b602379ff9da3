"""A PretrainJob on real kubelet nodes with its corpus and checkpoints in a bucket of the real S3
server (SeaweedFS on the pods' bridge), its credentials in a Secret: it loses a node pod, resumes
from the bucket and ends with the model of the uninterrupted `pretrain run`; a FinetuneJob
chained to it starts from its S3 checkpoint. No secret value shows in status, events or logs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import s3fs
import torch
import yaml
from kubernetes import client
from safetensors.torch import load_file
from test_finetune_chain import finetune_manifest, finetune_status

from devcluster.objectstore import ObjectStore, ObjectStoreState, environment
from devcluster.realnode.addresses import GATEWAY
from devcluster.realnode.pool import RealNodePool
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until
from e2e_support import MAX_STEPS, JobRun, job_manifest
from pretrain_trainer.labeled import build_docs

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("operator")]
SECRET = "bucket-credentials"


@pytest.fixture
def bridge_store(
    real_nodes: RealNodePool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ObjectStoreState]:
    """An S3 server on the bridge's gateway, which the pods reach (the session's listens on
    loopback); this process talks to it with the same variables."""
    real_nodes.add()  # the bridge, and the gateway address on it
    store = ObjectStore(tmp_path / "store")
    state = store.start(address=GATEWAY)
    for name, value in environment(state).items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield state
    store.stop()
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_job_on_s3_survives_a_lost_pod_and_a_finetune_job_starts_from_its_checkpoint(
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, checkpoints: Path,
    pvc_root: Path, reference: Path, bridge_store: ObjectStoreState,
) -> None:  # fmt: skip
    real_nodes.add()
    bucket = bridge_store.bucket
    s3 = s3fs.S3FileSystem()
    s3.put_file(str(pvc_root / "corpus" / "python-docs.jsonl"),
                f"{bucket}/corpus/python-docs.jsonl")  # fmt: skip
    variables = {k: v for k, v in environment(bridge_store).items() if k.startswith("AWS_")}
    cluster.core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=SECRET), string_data=variables))  # fmt: skip

    manifest = job_manifest("tiny", real_nodes.selector, replicas={"min": 2, "max": 2})
    spec = manifest["spec"]
    spec["data"]["sources"] = [{"uri": f"s3://{bucket}/corpus/"}]
    spec["data"]["secretRef"] = {"name": SECRET}
    spec["checkpoint"]["storage"] = {"uri": f"s3://{bucket}/checkpoints/tiny",
                                     "secretRef": {"name": SECRET}}  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest))
    run = JobRun(cluster, namespace, "tiny", checkpoints / "tiny")  # status only: no claim here

    def committed() -> list[str]:
        """The steps committed in the bucket, read there: the status learns of them up to a
        progress interval later, and on an idle machine the 24 steps take about 15 s."""
        s3.invalidate_cache()
        return list(s3.glob(f"{bucket}/checkpoints/tiny/step-*/manifest.json"))

    wait_until(committed, "a checkpoint in the bucket", timeout=300, interval=0.2)
    cluster.core.delete_namespaced_pod("tiny-node-1", namespace)
    done = run.wait_phase("Succeeded", timeout=600)

    assert done.get("restarts", 0) + done.get("disruptions", 0) >= 1, done
    assert done["checkpoint"]["uri"] == f"s3://{bucket}/checkpoints/tiny/step-{MAX_STEPS:09d}"
    # The model exported beside the checkpoints is the uninterrupted local run's.
    s3.get_file(f"{bucket}/checkpoints/tiny/model/model.safetensors",
                str(checkpoints / "model.safetensors"))  # fmt: skip
    trained = load_file(str(checkpoints / "model.safetensors"))
    local = load_file(str(reference / "model" / "model.safetensors"))
    assert trained.keys() == local.keys()
    for key, tensor in local.items():
        torch.testing.assert_close(trained[key], tensor, rtol=1e-3, atol=1e-4)

    build_docs(pvc_root / "corpus")
    tuned = finetune_manifest("tiny", real_nodes.selector)
    tuned["spec"]["checkpoint"]["storage"] = {"uri": f"s3://{bucket}/checkpoints/tiny-classify",
                                              "secretRef": {"name": SECRET}}  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(tuned))

    def finished_status() -> dict[str, Any] | None:
        status = finetune_status(cluster, namespace, "tiny-classify")
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    finished = wait_until(finished_status, "the FinetuneJob finished", timeout=600)
    assert finished["phase"] == "Succeeded", finished
    assert finished["base"]["resolvedCheckpoint"] == done["checkpoint"]["uri"]
    assert finished["evaluation"]["metrics"]["accuracy"] > 0

    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    logs = cluster.kubectl("logs", "-n", namespace, "tiny-classify-node-0", check=False).stdout
    said = [json.dumps(run.status()), json.dumps(finished), events, logs]
    assert not [text for text in said if bridge_store.secret_key in text]
