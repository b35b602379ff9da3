"""Kubeflow's training operator (PyTorchJob) as the baseline of the operator benchmark: built with
`go install` from the Go module proxy, cached by version outside the repository like the control
plane's tools, and run out-of-cluster against the benchmark's API server.

Nothing of it is vendored: its CRD is read from the module cache (`go mod download`), where the
build put the module anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from devcluster.tools import cache_dir

MODULE = "github.com/kubeflow/training-operator"
VERSION = "v1.8.1"  # the newest version the module proxy lists for this module path
COMMAND = f"{MODULE}/cmd/training-operator.v1"
BINARY = "training-operator.v1"
# The rotator of its webhook certificates looks for these (pkg/cert in the module).
OPERATOR_NAMESPACE = "kubeflow"
WEBHOOK_CONFIGURATION = "validator.training-operator.kubeflow.org"
WEBHOOK_SECRET = "training-operator-webhook-cert"
# In a pod the Secret is mounted here, and the operator waits for the files before it starts its
# controllers; out of cluster the benchmark plays the kubelet and writes them (a fixed path in
# the operator's code, pkg/cert).
CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
CERT_FILES = ("ca.crt", "tls.crt", "tls.key")


def binary(root: Path | None = None) -> Path:
    """The built operator, building it once (about a minute on 2 cores with a warm Go cache)."""
    final = (root or cache_dir()) / "bin" / f"training-operator-{VERSION}"
    if (final / BINARY).exists():
        return final / BINARY
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".training-operator-", dir=final.parent))
    try:
        print(f"building {MODULE} {VERSION} (once; cached in {final})", file=sys.stderr)
        env = {**os.environ, "GOBIN": str(staging), "CGO_ENABLED": "0"}
        subprocess.run(["go", "install", "-trimpath", "-ldflags", "-s -w", f"{COMMAND}@{VERSION}"],
                       check=True, env=env, cwd=tempfile.gettempdir())  # fmt: skip
        staging.chmod(0o755)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / BINARY


def module_dir() -> Path:
    """The module's source in the Go module cache (downloaded if missing)."""
    done = subprocess.run(["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"],
                          capture_output=True, text=True, check=True,
                          cwd=tempfile.gettempdir())  # fmt: skip
    return Path(json.loads(done.stdout)["Dir"])


def pytorchjob_crd() -> Path:
    return module_dir() / "manifests" / "base" / "crds" / "kubeflow.org_pytorchjobs.yaml"


def webhook_configuration() -> dict[str, Any]:
    """A ValidatingWebhookConfiguration for its certificate rotator to fill in. It validates
    nothing: out of cluster no Service reaches the operator's webhook server, so PyTorchJobs are
    admitted without a webhook call (which only spares the baseline a round trip)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIGURATION},
        "webhooks": [{
            "name": "none.training-operator.kubeflow.org",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"service": {"name": "training-operator",
                                         "namespace": OPERATOR_NAMESPACE, "path": "/none"}},
            "rules": [{"apiGroups": ["bench.invalid"], "apiVersions": ["v1"],
                       "operations": ["CREATE"], "resources": ["nothing"]}],
        }],
    }  # fmt: skip


def pytorchjob(name: str, workers: int, pod: dict[str, Any]) -> dict[str, Any]:
    """A PyTorchJob of 1 master and `workers` workers, each pod as `pod` (a PodSpec whose first
    container becomes `pytorch` with the port the operator looks for: its admission webhook
    would default them, and out of cluster no webhook runs)."""
    container = {**pod["containers"][0], "name": "pytorch",
                 "ports": [{"name": "pytorchjob-port", "containerPort": 23456}]}  # fmt: skip
    spec = {**pod, "containers": [container, *pod["containers"][1:]]}

    def replicas(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "OnFailure", "template": {"spec": spec}}

    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": replicas(1), "Worker": replicas(workers)}},
    }


def running(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Running" and c["status"] == "True" for c in conditions)
