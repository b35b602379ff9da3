"""The local cluster's Kueue setup (hack/devcluster/kueue.py), judged on Kueue's own manifests."""

from __future__ import annotations

import yaml

from devcluster import kueue, tools


def test_only_the_webhooks_kueue_serves_here_are_registered_and_they_call_loopback() -> None:
    manifests = (tools.ensure(tools.KUEUE) / "webhooks.yaml").read_text()
    documents = kueue.webhook_configurations(manifests, "https://127.0.0.1:9443", "Q0E=")
    assert {d["kind"] for d in documents} == {
        "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"
    }  # fmt: skip
    paths = [w["clientConfig"]["url"] for d in documents for w in d["webhooks"]]
    assert "https://127.0.0.1:9443/validate-kueue-x-k8s-io-v1beta2-workload" in paths
    assert "https://127.0.0.1:9443/mutate-batch-v1-job" in paths
    # Pods, Deployments, JobSets...: no handler here, and a 404 would refuse them all.
    assert not [p for p in paths if "pod" in p or "deployment" in p or "jobset" in p]
    assert all(w["clientConfig"]["caBundle"] == "Q0E=" for d in documents for w in d["webhooks"])
    assert all(d["metadata"]["name"].startswith("kueue-") for d in documents)


def test_the_configuration_names_our_kinds_as_external_frameworks() -> None:
    document = yaml.safe_load(kueue.configuration(1, 2, 3, tools.HACK_DIR))
    assert document["integrations"]["externalFrameworks"] == [
        "PretrainJob.v1alpha1.pretrain.dev", "FinetuneJob.v1alpha1.pretrain.dev"
    ]  # fmt: skip
    assert document["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": str(tools.HACK_DIR)}
    assert document["internalCertManagement"] == {"enable": False}
