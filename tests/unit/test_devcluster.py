"""The pure parts of the development cluster tooling, without starting anything."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devcluster import pki, tools
from devcluster.controlplane import STAGES_FILE
from devcluster.nodes import (
    EXIT_CODE_ANNOTATION,
    GPU_RESOURCE,
    PHASE_ANNOTATION,
    TPU_RESOURCE,
    NodeShape,
    node_manifest,
)
from devcluster.waiting import WaitTimeoutError, wait_until


def test_cache_key_changes_when_the_wrapper_module_changes(tmp_path: Path) -> None:
    assert tools.KUBE.source is not None
    copy = tmp_path / "controlplane"
    shutil.copytree(tools.KUBE.source, copy)
    original = tools.Tool("kube", tools.KUBERNETES_VERSION, ("kube",), copy)
    key = original.key
    assert key.startswith(f"kube-{tools.KUBERNETES_VERSION}-")

    (copy / "main.go").write_text((copy / "main.go").read_text() + "\n// changed\n")
    assert original.key != key
    assert tools.HELM.key == f"helm-{tools.HELM_VERSION}"  # go-installed: the version is the key


def test_cache_lives_outside_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRETRAIN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/someone")
    assert tools.cache_dir() == Path("/var/cache/someone/pretrain-operator")
    monkeypatch.setenv("PRETRAIN_CACHE", "/elsewhere")
    assert tools.cache_dir() == Path("/elsewhere")


def test_version_ldflags_tell_clients_the_real_kubernetes_version() -> None:
    flags = tools._version_ldflags("v1.37.2")
    assert "-X k8s.io/component-base/version.gitVersion=v1.37.2" in flags
    assert "-X k8s.io/component-base/version.gitMajor=1" in flags
    assert "-X k8s.io/component-base/version.gitMinor=37" in flags


def test_gpu_node_advertises_its_gpus_to_the_scheduler() -> None:
    node = node_manifest("n1", NodeShape(gpus=8))
    assert node["status"]["capacity"][GPU_RESOURCE] == "8"
    assert node["status"]["allocatable"] == node["status"]["capacity"]
    assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == "8"
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}
    assert TPU_RESOURCE not in node["status"]["capacity"]


def test_tpu_node_carries_gke_tpu_selectors() -> None:
    node = node_manifest("t1", NodeShape(tpu_chips=4, tpu_topology="2x2"))
    labels = node["metadata"]["labels"]
    assert node["status"]["capacity"][TPU_RESOURCE] == "4"
    assert labels["cloud.google.com/gke-tpu-topology"] == "2x2"
    assert labels["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5-lite-podslice"
    assert GPU_RESOURCE not in node["status"]["capacity"]


def test_kwok_stages_cover_the_lifecycle_and_match_the_fault_annotations() -> None:
    documents = list(yaml.safe_load_all(STAGES_FILE.read_text()))
    stages = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Stage"}
    assert set(stages) == {
        "node-initialize",
        "node-heartbeat",
        "pod-ready",
        "pod-finish-on-demand",
        "pod-delete",
    }
    finish = stages["pod-finish-on-demand"]
    keys = [e["key"] for e in finish["spec"]["selector"]["matchExpressions"]]
    assert f'.metadata.annotations["{PHASE_ANNOTATION}"]' in keys
    assert EXIT_CODE_ANNOTATION in finish["spec"]["next"]["statusTemplate"]


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_pki_issues_a_serving_and_an_admin_certificate_from_one_ca(tmp_path: Path) -> None:
    created = pki.create(tmp_path / "pki", service_ip="10.96.0.1")
    ca = _load(created.ca_cert)
    serving = _load(created.serving_cert)
    admin = _load(created.admin_cert)

    serving.verify_directly_issued_by(ca)
    admin.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("10.96.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    organization = admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert organization == "system:masters"
    usages = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usages
    assert created.service_account_key.stat().st_mode & 0o077 == 0  # private keys stay private


def test_wait_until_returns_the_first_truthy_value() -> None:
    values = iter([None, 0, "ready"])
    assert wait_until(lambda: next(values), "a value", timeout=5, interval=0) == "ready"


def test_wait_until_says_what_it_waited_for_and_what_it_saw() -> None:
    with pytest.raises(WaitTimeoutError, match=r"waiting for ready pods; last seen: \[\]"):
        wait_until(lambda: [], "ready pods", timeout=0)
