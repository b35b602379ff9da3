"""The real prometheus-operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule, ...), so the
API server judges the chart's monitoring objects against their actual schemas.

The Go module proxy serves prometheus-operator's API types (pkg/apis/monitoring) but not its root
module, where the released CRD YAML lives; so the CRDs are generated from those types with
controller-gen, as prometheus-operator's own build does. Built once and cached by version
outside the repository (nothing fetched is committed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from devcluster.tools import cache_dir

MONITORING_MODULE = "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring"
MONITORING_VERSION = "v0.95.2"
CONTROLLER_TOOLS_VERSION = "v0.23.0"
NEEDED = (
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_podmonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
)


def prometheus_operator_crds(root: Path | None = None) -> Path:
    """The directory of the generated monitoring.coreos.com/v1 CRDs, generating them once."""
    final = (root or cache_dir()) / f"prometheus-operator-crds-{MONITORING_VERSION}"
    if all((final / name).exists() for name in NEEDED):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prometheus-operator-crds-", dir=final.parent))
    try:
        env = {**os.environ, "GOBIN": str(staging / "bin"), "CGO_ENABLED": "0", "GOFLAGS": ""}
        tool = f"sigs.k8s.io/controller-tools/cmd/controller-gen@{CONTROLLER_TOOLS_VERSION}"
        subprocess.run(["go", "install", tool], check=True, env=env)
        module = staging / "module"
        module.mkdir()
        (module / "go.mod").write_text(
            f"module crds\n\ngo 1.24\n\nrequire {MONITORING_MODULE} {MONITORING_VERSION}\n"
        )
        (module / "crds.go").write_text(f'package crds\n\nimport _ "{MONITORING_MODULE}/v1"\n')
        subprocess.run(["go", "mod", "tidy"], check=True, env=env, cwd=module)
        output = staging / "crds"
        subprocess.run(
            [str(staging / "bin" / "controller-gen"), "crd:crdVersions=v1,maxDescLen=0",
             f"paths={MONITORING_MODULE}/v1", f"output:crd:dir={output}"],
            check=True, env=env, cwd=module,
        )  # fmt: skip
        missing = [name for name in NEEDED if not (output / name).exists()]
        if missing:
            raise RuntimeError(f"controller-gen produced no {', '.join(missing)}")
        shutil.rmtree(final, ignore_errors=True)
        output.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
