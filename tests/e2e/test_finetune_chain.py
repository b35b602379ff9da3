"""A FinetuneJob chained to a PretrainJob through the operator on real kubelet nodes: it waits
while its base trains, then starts from the base's last checkpoint, trains, and reports its
evaluation in status.evaluation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.realnode.pool import RealNodePool
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until
from e2e_support import MAX_STEPS, JobRun, job_manifest
from pretrain_trainer.labeled import build_docs

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("operator")]

CLASSES = 4  # docstrings labelled by module family, balanced


def finetune_manifest(base: str, node_selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "pretrain.dev/v1alpha1",
        "kind": "FinetuneJob",
        "metadata": {"name": f"{base}-classify"},
        "spec": {
            "base": {"pretrainJob": base},
            "task": {"type": "SequenceClassification", "numLabels": CLASSES},
            "method": {"type": "Full"},
            "data": {"train": {"uri": "pvc://corpus/docs-classify/train.jsonl"},
                     "validation": {"uri": "pvc://corpus/docs-classify/validation.jsonl"},
                     "sequenceLength": 32},
            "evaluation": {"everySteps": 10, "metrics": ["accuracy", "macroF1"]},
            "training": {"globalBatchSize": 32, "microBatchSize": 32, "maxSteps": 30,
                         "precision": "fp32", "optimizer": {"learningRate": 2.0e-3}},
            "checkpoint": {"storage": {"persistentVolumeClaim": "checkpoints"}},
            "replicas": {"min": 1, "max": 1},
            "resources": {"cpu": "1", "memory": "2Gi"},
            "template": {"nodeSelector": node_selector},
        },
    }  # fmt: skip


def finetune_status(cluster: ClusterSession, namespace: str, name: str) -> dict[str, Any]:
    body = cluster.kubectl("get", "ftj", name, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(body).get("status") or {})


def test_a_finetune_job_waits_for_its_base_then_reports_its_evaluation(
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, checkpoints: Path,
    pvc_root: Path, figure: Callable[[str, float], None],
) -> None:  # fmt: skip
    build_docs(pvc_root / "corpus")  # the labeled set, beside the unlabeled corpus on the claim
    real_nodes.add()
    real_nodes.add()
    finetune = finetune_manifest("chain", real_nodes.selector)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(finetune))
    pretrain = job_manifest("chain", real_nodes.selector)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(pretrain))
    base = JobRun(cluster, namespace, "chain", checkpoints / "chain")
    name = finetune["metadata"]["name"]

    base.wait_step(1)
    waiting = finetune_status(cluster, namespace, name)
    conditions = {c["type"]: c for c in waiting.get("conditions", [])}
    assert waiting["phase"] == "Pending"
    assert conditions["WaitingForBase"]["status"] == "True"
    selector = f"pretrain.dev/job-name={name}"
    pods = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "name")
    assert not pods.stdout.strip()  # nothing runs before the base is done

    base.wait_phase("Succeeded")

    def finished() -> dict[str, Any] | None:
        status = finetune_status(cluster, namespace, name)
        assert status.get("phase") != "Failed", status
        return status if status.get("phase") == "Succeeded" else None

    status = wait_until(finished, f"FinetuneJob {name} Succeeded", timeout=420, interval=2.0)
    assert status["base"]["resolvedCheckpoint"].endswith(f"step-{MAX_STEPS:09d}")
    evaluation = status["evaluation"]
    assert evaluation["step"] == 30
    figure("accuracy", evaluation["metrics"]["accuracy"])
    figure("macroF1", evaluation["metrics"]["macroF1"])
    assert evaluation["metrics"]["accuracy"] > 1 / CLASSES  # above chance on held-out data
    assert 0 < evaluation["metrics"]["macroF1"] <= 1
