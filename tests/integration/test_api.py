"""The CRDs on the real API server: examples are accepted with defaults applied, bad input is
refused with a message that names the field, `kubectl` reads them like documentation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from api_cases import EXAMPLES, FINETUNE, GROUP, INVALID, PRETRAIN, VERSION, mutated
from devcluster.session import ClusterSession
from operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

PLURALS = {"PretrainJob": "pretrainjobs", "FinetuneJob": "finetunejobs"}


def create(
    cluster: ClusterSession, namespace: str, manifest: dict[str, Any], dry_run: bool = False
) -> dict[str, Any]:
    objects = client.CustomObjectsApi(cluster.api)
    created: dict[str, Any] = objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURALS[manifest["kind"]],
        manifest,
        dry_run="All" if dry_run else None,
        field_validation="Strict",  # as kubectl does: unknown fields are errors, not dropped
    )
    return created


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_every_example_is_accepted(cluster: ClusterSession, namespace: str, example: Path) -> None:
    for manifest in yaml.safe_load_all(example.read_text()):
        created = create(cluster, namespace, manifest)
        assert created["spec"]["training"]["optimizer"]["name"] == "AdamW"  # defaults applied


@pytest.mark.usefixtures("crds")
def test_defaults_fill_the_parts_a_user_leaves_out(cluster: ClusterSession, namespace: str) -> None:
    spec = create(cluster, namespace, PRETRAIN)["spec"]
    assert spec["replicas"] == {"min": 1, "max": 1}
    assert spec["training"]["precision"] == "bf16"
    assert spec["training"]["schedule"] == {
        "warmupSteps": 0,
        "decay": "Cosine",
        "minLearningRate": 0.0,
    }
    assert spec["tokenizer"] == {"type": "BPE", "vocabSize": 8192, "uri": ""}
    assert spec["failurePolicy"] == {"maxRestarts": 10}
    assert spec["checkpoint"] == {"everySteps": 500, "keep": 3, "background": True}
    assert spec["suspend"] is False


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize(
    ("base", "changes", "field"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_spec_is_refused_naming_the_field(
    cluster: ClusterSession,
    namespace: str,
    base: dict[str, Any],
    changes: dict[str, Any],
    field: str,
) -> None:
    with pytest.raises(ApiException) as refused:
        create(cluster, namespace, mutated(base, changes), dry_run=True)
    assert refused.value.status in {400, 422}, refused.value.body  # 400: unknown field
    message = json.loads(refused.value.body)["message"]
    assert field in message, message


def test_at_least_25_distinct_invalid_manifests() -> None:
    assert len({case[0] for case in INVALID}) == len(INVALID) >= 25


@pytest.mark.usefixtures("crds")
def test_objective_model_and_data_are_frozen_once_started(
    cluster: ClusterSession, namespace: str, operator: OperatorProcess
) -> None:
    """The test writes the status an operator would: the session's operator is stopped
    meanwhile, or it would rewrite that status from its own (CI of 4498df0: the spec change
    was let through because the operator had just dropped the test's startTime)."""
    operator.stop()
    try:
        _frozen_once_started(cluster, namespace)
    finally:
        operator.start()


def _frozen_once_started(cluster: ClusterSession, namespace: str) -> None:
    objects = client.CustomObjectsApi(cluster.api)
    create(cluster, namespace, PRETRAIN)
    patch = {"spec": {"objective": {"maskProbability": 0.3}}}
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "pretrainjobs", "valid", patch
    )

    objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "pretrainjobs", "valid",
        {"status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z"}},
    )  # fmt: skip
    with pytest.raises(ApiException) as refused:
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "pretrainjobs", "valid",
            {"spec": {"objective": {"maskProbability": 0.2}}},
        )  # fmt: skip
    assert refused.value.status == 422
    assert "spec.objective" in json.loads(refused.value.body)["message"]
    # What is not part of the experiment's identity still changes: scaling, suspending.
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "pretrainjobs", "valid",
        {"spec": {"replicas": {"max": 4}, "suspend": True}},
    )  # fmt: skip


@pytest.mark.usefixtures("crds")
def test_kubectl_explain_reads_like_documentation(cluster: ClusterSession) -> None:
    explained = cluster.kubectl("explain", "ptj.spec.objective").stdout
    assert "The self-supervised objective" in explained
    assert "maskProbability" in explained
    assert "default 0.15" in explained
    assert "CausalLM" in cluster.kubectl("explain", "ftj.spec.task.type").stdout


@pytest.mark.usefixtures("crds")
def test_short_names_category_columns_and_scale(cluster: ClusterSession, namespace: str) -> None:
    create(cluster, namespace, PRETRAIN)
    create(cluster, namespace, FINETUNE)
    header = cluster.kubectl("get", "ptj", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "NODES", "STEP", "LOSS", "TOKENS/S", "AGE"]
    listed = cluster.kubectl("get", "training", "-n", namespace, "-o", "name").stdout.split()
    assert sorted(listed) == ["finetunejob.pretrain.dev/valid", "pretrainjob.pretrain.dev/valid"]

    cluster.kubectl("scale", "ptj/valid", "-n", namespace, "--replicas=3")
    spec = json.loads(cluster.kubectl("get", "ptj/valid", "-n", namespace, "-o", "json").stdout)
    assert spec["spec"]["replicas"]["max"] == 3
