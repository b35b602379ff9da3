"""Random specs thrown at the real API server and the running operator: whatever the server
accepts, the operator reconciles to some phase without a reconcile error, and it stays alive."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from api_cases import PRETRAIN, mutated
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until
from operator_process import OperatorProcess

pytestmark = pytest.mark.cluster

PATHS = [
    "spec.objective.type", "spec.objective.maskProbability", "spec.model.family",
    "spec.model.size", "spec.model.overrides", "spec.replicas.min", "spec.replicas.max",
    "spec.training.globalBatchSize", "spec.training.microBatchSize", "spec.training.maxSteps",
    "spec.resources", "spec.resources.accelerator", "spec.checkpoint", "spec.suspend",
    "spec.scheduling", "spec.template", "spec.failurePolicy.maxRestarts", "spec.data.sources",
    "spec.ttlSecondsAfterFinished", "spec.tokenizer",
]  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False)
    | st.sampled_from(["", "bert", "gpt", "MaskedLM", "CausalLM", "nvidia.com/gpu",
                       "google.com/tpu", "2x2", "file:///x", "pvc://c/p", "s3://b/k"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["type", "count", "uri", "min", "max", "topology",
                                       "storage", "persistentVolumeClaim", "gang"]), inner,
                      max_size=3),
    max_leaves=6,
)  # fmt: skip
# Values the API server may well accept, so that many examples reach the operator.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "spec.replicas.min": st.integers(1, 4),
    "spec.replicas.max": st.integers(1, 6),
    "spec.suspend": st.booleans(),
    "spec.training.maxSteps": st.integers(1, 10**6),
    "spec.failurePolicy.maxRestarts": st.integers(0, 3),
    "spec.ttlSecondsAfterFinished": st.integers(0, 100),
    "spec.resources": st.sampled_from([
        {}, {"cpu": 2, "memory": "1Gi"}, {"accelerator": {"type": "nvidia.com/gpu", "count": 8}},
        {"accelerator": {"type": "google.com/tpu", "count": 4, "topology": "2x2"}}]),
    "spec.checkpoint": st.sampled_from([
        {}, {"storage": {"persistentVolumeClaim": "c"}}, {"storage": {"uri": "s3://b/p"}}]),
    "spec.scheduling": st.sampled_from([
        {}, {"gang": True}, {"queueName": "q"}, {"disruptionBudget": True}]),
    "spec.template": st.sampled_from([
        {}, {"image": "trainer:dev"}, {"nodeSelector": {"pool": "x"}},
        {"env": [{"name": "A", "value": "1"}]}]),
}  # fmt: skip


@st.composite
def spec_changes(draw: st.DrawFn) -> dict[str, Any]:
    # Mostly plausible changes (they reach the operator), some arbitrary ones (they test the
    # API server's refusals and whatever it lets through).
    plausible = draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), max_size=4, unique=True))
    arbitrary = draw(st.lists(st.sampled_from(PATHS), max_size=1, unique=True))
    changes = {path: draw(PLAUSIBLE[path]) for path in plausible}
    changes.update({path: draw(json_values) for path in arbitrary})
    return changes


names = (f"fuzz-{i}" for i in itertools.count())


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=spec_changes())
def test_operator_survives_random_specs(
    cluster: ClusterSession, namespace: str, operator: OperatorProcess, changes: dict[str, Any]
) -> None:
    objects = client.CustomObjectsApi(cluster.api)
    name = next(names)
    try:
        manifest = mutated({**PRETRAIN, "metadata": {"name": name}}, changes)
    except (TypeError, KeyError, IndexError, AttributeError):
        return  # the change does not fit the document's shape; nothing to send
    try:
        objects.create_namespaced_custom_object(
            "pretrain.dev", "v1alpha1", namespace, "pretrainjobs", manifest
        )
    except ApiException as error:
        if error.status not in {400, 422}:  # bad input is refused as such, never a server error
            raise
        event("refused by the API server")
        return
    event("accepted and reconciled")

    def reconciled() -> dict[str, Any] | None:
        body = objects.get_namespaced_custom_object(
            "pretrain.dev", "v1alpha1", namespace, "pretrainjobs", name
        )
        status = body.get("status") or {}
        return status if status.get("observedGeneration") else None

    status = wait_until(reconciled, f"the operator to reconcile {name}", timeout=30)
    assert not [c for c in status["conditions"] if c["type"] == "ReconcileFailed"], status
    assert operator.healthy()
