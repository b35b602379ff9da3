"""Kueue in the local cluster: its controller manager (built from the Go module proxy, tools.KUEUE)
against the local API server, as a cluster's Kueue runs, so queues, admission and preemption in
the tests and `make demo` are Kueue's own.

What a Deployment in `kueue-system` would get from its manifests, it gets here on loopback: the
CRDs from Kueue's module, its webhooks called at `https://127.0.0.1:PORT` with the API server's
serving certificate (from the cluster's CA, valid for 127.0.0.1), no leader election, and no
visibility API (an aggregated API server needs a Service to be reached at). Kueue manages no
built-in workload kinds here but `batch/job` (for trying it with a plain Job, as its quick start
does); PretrainJob and FinetuneJob are its external frameworks: the operator owns their Workloads.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

NAMESPACE = "kueue-system"
API_VERSION = "kueue.x-k8s.io/v1beta2"
EXTERNAL_FRAMEWORKS = ("PretrainJob.v1alpha1.pretrain.dev", "FinetuneJob.v1alpha1.pretrain.dev")
# Kueue's own webhooks (its queues, flavors, workloads) and the one for Jobs: its manifests also
# hold a webhook for every other integration, which here would answer 404 and, failing closed,
# refuse those kinds (pods included) cluster-wide.
SERVED_WEBHOOK_PATHS = ("-kueue-x-k8s-io-", "-batch-v1-job")
FEATURE_GATES = "VisibilityOnDemand=false"
METRICS_CERTIFICATES = Path("/etc/kueue/metrics/certs")


def place_certificates(cert: Path, key: Path, webhook_dir: Path) -> None:
    """The serving certificate where Kueue reads it: its webhook server's in `webhook_dir`,
    and its metrics server's at METRICS_CERTIFICATES, a path Kueue v0.17 fixes (a pod gets a
    Secret mounted there) and needs even where nothing scrapes it."""
    for directory in (webhook_dir, METRICS_CERTIFICATES):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cert, directory / "tls.crt")
            shutil.copyfile(key, directory / "tls.key")
            (directory / "tls.key").chmod(0o600)
        except PermissionError as error:
            raise PermissionError(f"Kueue reads its certificates from {directory}: {error}; "
                                  "start the cluster as root") from error  # fmt: skip


def configuration(webhook_port: int, health_port: int, metrics_port: int, cert_dir: Path) -> str:
    """Kueue's Configuration file (config.kueue.x-k8s.io/v1beta2) for the local cluster."""
    document = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {
            "frameworks": ["batch/job"],
            "externalFrameworks": list(EXTERNAL_FRAMEWORKS),
        },
    }
    return yaml.safe_dump(document, sort_keys=False)


def webhook_configurations(manifests: str, url: str, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations (its `webhook/manifests.yaml`), reduced to the webhooks
    this Kueue serves and pointed at `url` instead of its Service, trusting `ca_bundle` (base64
    PEM)."""
    documents = []
    for document in yaml.safe_load_all(manifests):
        if not document:
            continue
        kept = []
        for webhook in document.get("webhooks", []):
            path = webhook["clientConfig"]["service"]["path"]
            if any(part in path for part in SERVED_WEBHOOK_PATHS):
                webhook["clientConfig"] = {"url": url + path, "caBundle": ca_bundle}
                kept.append(webhook)
        name = document["metadata"]["name"]
        documents.append({**document, "metadata": {"name": f"kueue-{name}"}, "webhooks": kept})
    return documents


def crd_plurals(manifests: Path) -> set[str]:
    """The resources Kueue's CRDs define (their files are named GROUP_PLURAL.yaml)."""
    return {crd.stem.split("_", 1)[1] for crd in (manifests / "crds").glob("*.yaml")}


def install_crds(kubectl: list[str], manifests: Path) -> None:
    """Apply Kueue's CRDs (server-side: they are too large for the last-applied annotation)."""
    _run([*kubectl, "apply", "--server-side", "--force-conflicts", "-f", str(manifests / "crds")])


def install_webhooks(kubectl: list[str], manifests: Path, url: str, ca_bundle: str) -> None:
    """Register Kueue's webhooks, once it serves them."""
    documents = webhook_configurations((manifests / "webhooks.yaml").read_text(), url, ca_bundle)
    _run([*kubectl, "apply", "--server-side", "--force-conflicts", "-f", "-"],
         yaml.safe_dump_all(documents))  # fmt: skip
    namespace = yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": NAMESPACE}})  # fmt: skip
    _run([*kubectl, "apply", "-f", "-"], namespace)  # where Kueue records its events


def _run(command: list[str], stdin: str | None = None) -> None:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[-4:])} failed: {result.stderr.strip()}")
